// The app's state in one object: the view (what the URL holds), what the API told us, and the
// chosen photo. Its methods are the only way the state changes; they touch no DOM (store.test.ts).

import type { Facets, ModelInfo, ModelsResponse, Product, Rerank, SearchOptions } from "./api";
import {
  cleanQuery,
  knownFilters,
  parseState,
  stateToSearch,
  supportedRerank,
  type ViewState,
  withFilter,
} from "./state";

export interface ImageQuery {
  blob: Blob;
  name: string;
  url: string; // an object URL of the blob, for the preview
  decoded: boolean; // the browser could decode it (else it is uploaded as it is, without crop)
}

export class Store {
  view: ViewState;
  models: ModelsResponse | null = null;
  filterFields: string[] | null = null; // the catalog's filter fields, once the facets are loaded
  image: ImageQuery | null = null;
  readonly known = new Map<number, Product>(); // products seen in results, for the "more like this" panel

  constructor(search: string) {
    this.view = parseState(search);
  }

  /** The URL query string of the view. */
  get search(): string {
    return stateToSearch(this.view);
  }

  /** Take the loaded models; a model the URL named that is not served falls back to the default. */
  useModels(resp: ModelsResponse): void {
    this.models = resp;
    if (!this.view.model || !resp.models.some((m) => m.name === this.view.model)) {
      this.view.model = resp.default || resp.models[0]?.name || null;
    }
  }

  /** Keep only the URL's filters on fields the catalog has (the API's facets name them). */
  useFacets(facets: Facets): void {
    this.filterFields = Object.keys(facets);
    this.view.filters = knownFilters(this.view.filters, this.filterFields);
  }

  setModel(name: string): void {
    this.view.model = name;
  }

  setQuery(text: string): void {
    this.view.q = cleanQuery(text);
  }

  setTopK(k: number): void {
    this.view.topK = k;
  }

  setRerank(rerank: Rerank): void {
    this.view.rerank = rerank;
  }

  setFilter(field: string, value: string): void {
    this.view.filters = withFilter(this.view.filters, field, value);
  }

  clearFilters(): void {
    this.view.filters = {};
  }

  /** Search with a catalog product ("more like this"); null goes back to the photo. */
  setLike(product: Product | null): void {
    if (product) this.known.set(product.id, product);
    this.view.likeId = product ? product.id : null;
  }

  /** Go back to the view a URL describes (back/forward navigation). */
  restore(search: string): void {
    this.view = parseState(search);
    if (this.filterFields) this.view.filters = knownFilters(this.view.filters, this.filterFields);
  }

  /** A new photo replaces the previous one (null: no photo); returns the one it replaced (its URL is to be
   * revoked). */
  setImage(image: ImageQuery | null): ImageQuery | null {
    const previous = this.image;
    this.image = image;
    return previous;
  }

  searchOptions(): SearchOptions {
    const v = this.view;
    return { model: v.model ?? "", topK: v.topK, filters: v.filters, rerank: supportedRerank(v.rerank, this.reranks) };
  }

  /** The chosen model as /api/models describes it (undefined until the models are known). */
  get model(): ModelInfo | undefined {
    return this.models?.models.find((m) => m.name === this.view.model);
  }

  /** The rerank values the chosen model accepts (undefined until the models are known). */
  get reranks(): Rerank[] | undefined {
    return this.model?.reranks;
  }
}
