// The view's state and the pure functions that change it. Model, K, filters, the ranking and the
// "more like this" product live in the URL, so a search can be reloaded or shared:
// ?model=efficientnet_lite0&k=15&gender=Men&articleType=Tshirts&like=1163 (&q=red+dress: words, alone or
// refining the photo)
// (&order=visual turns off "same type first" and "same gender first", both on by default: docs/results.md
// measures them; &order=type keeps the type only, &order=gender the gender only).
// Every other parameter is a filter; the fields the catalog has come from /api/facets (knownFilters).

import type { Filters, Rerank } from "./api";

export const TOP_K_CHOICES = [5, 10, 15, 30, 50] as const;
export const DEFAULT_TOP_K = 15;
export const MAX_TOP_K = 100;
export const DEFAULT_RERANK: Rerank = "category+gender";
const ORDER_PARAM: Record<Rerank, string | null> = {
  "category+gender": null,
  category: "type",
  gender: "gender",
  none: "visual",
};
const RESERVED = new Set(["model", "k", "like", "order", "q"]);
export const MAX_QUERY_CHARS = 200;

export interface ViewState {
  model: string | null;
  topK: number;
  filters: Filters;
  likeId: number | null;
  rerank: Rerank;
  q: string;
}

/** Words as the API takes them: whitespace collapsed, at most MAX_QUERY_CHARS. */
export function cleanQuery(text: string): string {
  // by code points, as the server counts: a UTF-16 slice could cut an emoji in half
  return Array.from(text.split(/\s+/).filter(Boolean).join(" ")).slice(0, MAX_QUERY_CHARS).join("");
}

export function parseState(search: string): ViewState {
  const params = new URLSearchParams(search);
  const k = Number.parseInt(params.get("k") ?? "", 10);
  const like = Number.parseInt(params.get("like") ?? "", 10);
  const filters: Filters = {};
  for (const field of new Set(params.keys())) {
    if (RESERVED.has(field)) continue;
    const values = params.getAll(field).filter((v) => v !== "");
    if (values.length) filters[field] = values;
  }
  return {
    model: params.get("model") || null,
    topK: Number.isFinite(k) && k >= 1 ? Math.min(k, MAX_TOP_K) : DEFAULT_TOP_K,
    filters,
    likeId: Number.isFinite(like) && like >= 0 ? like : null,
    rerank: rerankOfOrder(params.get("order")),
    q: cleanQuery(params.get("q") ?? ""),
  };
}

export function stateToSearch(state: ViewState): string {
  const params = new URLSearchParams();
  if (state.model) params.set("model", state.model);
  if (state.topK !== DEFAULT_TOP_K) params.set("k", String(state.topK));
  for (const [field, values] of Object.entries(state.filters)) {
    for (const value of values ?? []) params.append(field, value);
  }
  const order = ORDER_PARAM[state.rerank];
  if (order) params.set("order", order);
  if (state.likeId !== null) params.set("like", String(state.likeId));
  if (state.q) params.set("q", state.q);
  const s = params.toString();
  return s ? `?${s}` : "";
}

function rerankOfOrder(order: string | null): Rerank {
  const found = (Object.entries(ORDER_PARAM) as [Rerank, string | null][]).find(([, value]) => value === order);
  return found && order ? found[0] : DEFAULT_RERANK;
}

/** The ranking asked for by the two checkboxes "same type first" and "same gender first". */
export function rerankOf(typeFirst: boolean, genderFirst: boolean): Rerank {
  if (typeFirst) return genderFirst ? "category+gender" : "category";
  return genderFirst ? "gender" : "none";
}

export function typeFirstIn(rerank: Rerank): boolean {
  return rerank === "category" || rerank === "category+gender";
}

export function genderFirstIn(rerank: Rerank): boolean {
  return rerank === "gender" || rerank === "category+gender";
}

/** What a model can do of `rerank`: without a gender predictor (`reranks` lacks "gender"; an API that does not
 * list them has none), the gender part is left out. */
export function supportedRerank(rerank: Rerank, reranks: readonly Rerank[] | undefined): Rerank {
  const gender = genderFirstIn(rerank) && (reranks ?? []).includes("gender");
  return rerankOf(typeFirstIn(rerank), gender);
}

export function hasFilters(filters: Filters): boolean {
  return Object.values(filters).some((values) => (values?.length ?? 0) > 0);
}

export function filterCount(filters: Filters): number {
  return Object.values(filters).reduce((sum, values) => sum + (values?.length ?? 0), 0);
}

/** The filters whose field the catalog has (others, e.g. a tracking parameter, are dropped). */
export function knownFilters(filters: Filters, fields: Iterable<string>): Filters {
  const known = new Set(fields);
  return Object.fromEntries(Object.entries(filters).filter(([field]) => known.has(field)));
}

/** `filters` with `field` set to the one value chosen in a select ("" = any: the field is dropped). */
export function withFilter(filters: Filters, field: string, value: string): Filters {
  const next = { ...filters };
  if (value) next[field] = [value];
  else delete next[field];
  return next;
}

/** The K choices offered: the fixed ones plus the state's own (from a shared URL), ascending. */
export function topKOptions(topK: number): number[] {
  return [...new Set<number>([...TOP_K_CHOICES, topK])].sort((a, b) => a - b);
}
