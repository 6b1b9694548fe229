// Text shown to the user, as pure functions of the data (tested in Node: format.test.ts).

import { ApiError, type FacetValue, type ModelInfo, type Product, type Rerank, type SearchResponse } from "./api";
import { filterCount, hasFilters, supportedRerank, type ViewState } from "./state";

const numbers = new Intl.NumberFormat(); // the reader's locale

export function formatCount(n: number): string {
  return numbers.format(n);
}

/** "Shirts · Navy Blue · Men": what a result is, in a shopper's words. */
export function describe(p: Product): string {
  return [p.articleType, p.baseColour, p.gender].filter(Boolean).join(" · ");
}

/** Whether trying the same request again may help: the service unreachable, starting or overloaded. */
export function isTransient(err: unknown): boolean {
  return err instanceof ApiError && [0, 429, 502, 503, 504].includes(err.status);
}

export function errorMessage(err: unknown): string {
  if (err instanceof ApiError && err.status === 501) return "Search by words is not available on this service.";
  if (err instanceof ApiError || err instanceof Error) return err.message;
  return "Something went wrong. Please try again.";
}

/** The first two figures of a model's evaluation summary, e.g. "mAP 0.772, PrecisionHits 0.813". */
export function evaluationText(m: ModelInfo): string {
  const e = m.evaluation;
  if (!e) return "not evaluated yet";
  return Object.entries(e)
    .filter(([, v]) => typeof v === "number")
    .slice(0, 2)
    .map(([k, v]) => `${k} ${v.toFixed(3)}`)
    .join(", ");
}

export function modelLabel(m: ModelInfo): string {
  const score = m.evaluation && typeof m.evaluation.mAP === "number" ? ` · mAP ${m.evaluation.mAP.toFixed(3)}` : "";
  return `${m.name}${score}${m.default ? " (default)" : ""}`;
}

export function modelInfoText(m: ModelInfo): string {
  return `${m.description ? `${m.description}. ` : ""}${m.backbone ? `${m.backbone}, ` : ""}${m.dims} dims, ${formatCount(m.index_size)} products. ` +
    `Evaluation: ${evaluationText(m)}.`;
}

/** The folded options' summary on a phone: "tiny · 15 results · 1 filter · by look only". */
export function optionsSummary(state: ViewState, reranks?: readonly Rerank[]): string {
  const n = filterCount(state.filters);
  const parts = [state.model ?? "", `${state.topK} results`];
  if (n) parts.push(`${n} ${n === 1 ? "filter" : "filters"}`);
  // what the search does: a gender order the model cannot give leaves the look alone
  if (reranks ? supportedRerank(state.rerank, reranks) === "none" : state.rerank === "none") parts.push("by look only");
  return parts.filter(Boolean).join(" · ");
}

/** The status line under the results: how many, how fast, with which model, which type and gender first. */
export function resultsStatus(resp: SearchResponse, state: ViewState): string {
  const n = resp.results.length;
  if (!n) return "";
  const all = n < state.topK && hasFilters(state.filters) ? " (every product that passes the filters)" : "";
  const first = [resp.type_first, resp.gender_first].filter(Boolean).map((x) => ` · ${x} first`).join("");
  return `${n} ${n === 1 ? "result" : "results"}${all} in ${Math.round(resp.took_ms)} ms with ${resp.model}${first}`;
}

export interface Choice {
  value: string;
  label: string;
}

/** A filter select's options: "Any", the catalog's values with their counts, and a value from the
 * URL that the catalog lacks (kept, so the search says "no products match" instead of dropping it). */
export function facetChoices(values: FacetValue[], current: string | undefined): Choice[] {
  const choices: Choice[] = [{ value: "", label: "Any" }];
  for (const v of values) {
    if (v.value) choices.push({ value: v.value, label: `${v.value} (${formatCount(v.count)})` });
  }
  if (current && !values.some((v) => v.value === current)) choices.push({ value: current, label: current });
  return choices;
}

export function tagline(indexSize: number): string {
  return `Find fashion that looks like your photo among ${formatCount(indexSize)} products`;
}
