// Model, K, filters, the ranking and the "more like this" product live in the URL, so a search can
// be reloaded or shared: ?model=efficientnet_lite0&k=15&gender=Men&articleType=Tshirts&like=1163
// (&order=visual turns off "same type first", which is on by default: docs/results.md measures it).

import { FILTER_FIELDS, type Filters, type Rerank } from "./api";

export const TOP_K_CHOICES = [5, 10, 15, 30, 50] as const;
export const DEFAULT_TOP_K = 15;
export const MAX_TOP_K = 100;

export interface ViewState {
  model: string | null;
  topK: number;
  filters: Filters;
  likeId: number | null;
  rerank: Rerank;
}

export const DEFAULT_RERANK: Rerank = "category";

export function parseState(search: string): ViewState {
  const params = new URLSearchParams(search);
  const k = Number.parseInt(params.get("k") ?? "", 10);
  const like = Number.parseInt(params.get("like") ?? "", 10);
  const filters: Filters = {};
  for (const field of FILTER_FIELDS) {
    const values = params.getAll(field).filter((v) => v !== "");
    if (values.length) filters[field] = values;
  }
  return {
    model: params.get("model") || null,
    topK: Number.isFinite(k) && k >= 1 ? Math.min(k, MAX_TOP_K) : DEFAULT_TOP_K,
    filters,
    likeId: Number.isFinite(like) && like >= 0 ? like : null,
    rerank: params.get("order") === "visual" ? "none" : DEFAULT_RERANK,
  };
}

export function stateToSearch(state: ViewState): string {
  const params = new URLSearchParams();
  if (state.model) params.set("model", state.model);
  if (state.topK !== DEFAULT_TOP_K) params.set("k", String(state.topK));
  for (const field of FILTER_FIELDS) {
    for (const value of state.filters[field] ?? []) params.append(field, value);
  }
  if (state.rerank !== DEFAULT_RERANK) params.set("order", "visual");
  if (state.likeId !== null) params.set("like", String(state.likeId));
  const s = params.toString();
  return s ? `?${s}` : "";
}

export function hasFilters(filters: Filters): boolean {
  return FILTER_FIELDS.some((f) => (filters[f]?.length ?? 0) > 0);
}
