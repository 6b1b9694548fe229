// The only module that talks to the search API (served under /api; nginx proxies it).

/** A catalog attribute to filter on; the fields the API knows are the keys of /api/facets. */
export type FilterField = string;
export type Filters = Record<FilterField, string[] | undefined>;

export interface ModelInfo {
  name: string;
  description: string;
  backbone: string | null;
  kind: string;
  dims: number;
  index_type: string;
  index_size: number;
  input_size: number;
  default: boolean;
  /** The rerank values its searches accept ("gender" needs the model's gender predictor). */
  reranks?: Rerank[];
  evaluation: Record<string, number> | null;
}

export interface ModelsResponse {
  default: string;
  synthetic_catalog: boolean;
  models: ModelInfo[];
}

export interface FacetValue {
  value: string;
  count: number;
}
export type Facets = Record<FilterField, FacetValue[]>;

export interface Product {
  id: number;
  productDisplayName: string | null;
  articleType: string | null;
  baseColour: string | null;
  gender: string | null;
  masterCategory: string | null;
  subCategory: string | null;
  season: string | null;
  usage: string | null;
  year: number | null;
  image_url?: string;
}

export interface SearchResult extends Product {
  rank: number;
  score: number;
  image_url: string;
}

/** none: pure visual similarity; category: the product type voted by the nearest products comes first;
 * gender: the gender the model predicts for the photo comes first; category+gender: both. */
export type Rerank = "none" | "category" | "gender" | "category+gender";

export interface SearchResponse {
  model: string;
  took_ms: number;
  rerank: Rerank;
  /** With rerank "category" (or "category+gender"): the product type shown first; null otherwise. */
  type_first: string | null;
  /** With rerank "gender" (or "category+gender"): the gender shown first; null otherwise. */
  gender_first?: string | null;
  results: SearchResult[];
}

export interface SearchOptions {
  model: string;
  topK: number;
  filters: Filters;
  rerank: Rerank;
}

/** An error to show to the user as it is: the API's own `detail`, or a plain explanation. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

const BASE = (import.meta.env.VITE_API_BASE as string | undefined) ?? "/api";

function fallbackMessage(status: number): string {
  if (status === 413) return "The file is too large to upload. Try a smaller photo.";
  if (status === 415 || status === 422) return "This file cannot be used as a search image.";
  if (status === 404) return "Not found.";
  if (status === 429) return "Too many searches at once. Please wait a moment and try again.";
  if (status >= 500) return "The search service is not available right now. Please try again in a moment.";
  return `The request failed (HTTP ${status}).`;
}

/** FastAPI's `detail` is a string, or a list of validation errors with `msg` fields. */
function detailText(detail: unknown): string | null {
  if (typeof detail === "string" && detail.trim()) return detail;
  if (Array.isArray(detail)) {
    const msgs = detail
      .map((d) => (d && typeof d === "object" && "msg" in d ? String((d as { msg: unknown }).msg) : ""))
      .filter(Boolean);
    if (msgs.length) return msgs.join("; ");
  }
  return null;
}

async function request<T>(path: string, init: RequestInit = {}, signal?: AbortSignal): Promise<T> {
  let res: Response;
  try {
    res = await fetch(BASE + path, { ...init, signal, headers: { Accept: "application/json", ...init.headers } });
  } catch (err) {
    if (err instanceof DOMException && err.name === "AbortError") throw err;
    throw new ApiError(0, "Cannot reach the search service. Check your connection and try again.");
  }
  if (!res.ok) {
    let message: string | null = null;
    try {
      message = detailText(((await res.json()) as { detail?: unknown }).detail);
    } catch {
      // not JSON (a proxy's error page): fall back to a plain message below
    }
    throw new ApiError(res.status, message ?? fallbackMessage(res.status));
  }
  try {
    return (await res.json()) as T;
  } catch {
    throw new ApiError(res.status, "The search service sent an unreadable answer. Please try again.");
  }
}

export function getModels(signal?: AbortSignal): Promise<ModelsResponse> {
  return request<ModelsResponse>("/models", {}, signal);
}

export function getFacets(signal?: AbortSignal): Promise<Facets> {
  return request<Facets>("/facets", {}, signal);
}

export function getProduct(id: number, signal?: AbortSignal): Promise<Product> {
  return request<Product>(`/products/${encodeURIComponent(String(id))}`, {}, signal);
}

/** Search with an uploaded image, refined by words when `q` is given (multipart form; filters are repeated fields). */
export function searchByImage(
  image: Blob,
  filename: string,
  opts: SearchOptions,
  signal?: AbortSignal,
  q = "",
): Promise<SearchResponse> {
  const form = new FormData();
  form.append("image", image, filename);
  if (q) form.append("q", q);
  form.append("model", opts.model);
  form.append("top_k", String(opts.topK));
  form.append("rerank", opts.rerank);
  for (const [field, values] of Object.entries(opts.filters)) {
    for (const value of values ?? []) form.append(field, value);
  }
  return request<SearchResponse>("/search", { method: "POST", body: form }, signal);
}

/** POST a JSON search body with the options' filters added (fields with values only). */
function searchJson(path: string, body: Record<string, unknown>, opts: SearchOptions, signal?: AbortSignal) {
  const payload: Record<string, unknown> = { ...body };
  for (const [field, values] of Object.entries(opts.filters)) {
    if (values?.length) payload[field] = values;
  }
  return request<SearchResponse>(
    path,
    { method: "POST", body: JSON.stringify(payload), headers: { "Content-Type": "application/json" } },
    signal,
  );
}

/** Search by words alone: by meaning and by letter, fused (the API's hybrid mode). */
export function searchByText(q: string, opts: SearchOptions, signal?: AbortSignal): Promise<SearchResponse> {
  return searchJson("/search/text", { q, model: opts.model, top_k: opts.topK }, opts, signal);
}

/** "More like this": search with a catalog product's stored vector. */
export function searchById(productId: number, opts: SearchOptions, signal?: AbortSignal): Promise<SearchResponse> {
  const body = { product_id: productId, model: opts.model, top_k: opts.topK, rerank: opts.rerank };
  return searchJson("/search/by-id", body, opts, signal);
}

/** The URL of a catalog product's current image (served by the API, revalidated on each use). */
export function imageUrl(id: number): string {
  return `${BASE}/images/${encodeURIComponent(String(id))}`;
}

/** An `image_url` of the API (`/api/images/<id>?v=<version>`: cached for good) under this app's API base. */
export function resolveImageUrl(url: string, base: string = BASE): string {
  return url.startsWith("/api/") ? base + url.slice("/api".length) : url;
}
