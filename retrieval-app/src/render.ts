// Everything the app draws: the page's elements (`ui`) and one function per part of the page.
// Rendering reads the store and writes the DOM; it never searches or changes the state.

import {
  type Facets,
  imageUrl,
  type ModelsResponse,
  type Product,
  resolveImageUrl,
  type SearchResponse,
  type SearchResult,
} from "./api";
import {
  describe,
  facetChoices,
  modelInfoText,
  modelLabel,
  optionsSummary,
  resultsStatus,
  tagline,
} from "./format";
import { genderFirstIn, hasFilters, topKOptions, typeFirstIn } from "./state";
import type { Store } from "./store";

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el as T;
};

export const ui = {
  tagline: $("tagline"),
  banner: $("synthetic-banner"),
  dropzone: $("dropzone"),
  dropEmpty: $("drop-empty"),
  pick: $<HTMLButtonElement>("pick-button"),
  camera: $<HTMLButtonElement>("camera-button"),
  fileInput: $<HTMLInputElement>("file-input"),
  cameraInput: $<HTMLInputElement>("camera-input"),
  preview: $("preview"),
  cropSurface: $("crop-surface"),
  previewImg: $<HTMLImageElement>("preview-img"),
  noPreview: $("no-preview"),
  previewCaption: $("preview-caption"),
  clearCrop: $<HTMLButtonElement>("clear-crop"),
  changePhoto: $<HTMLButtonElement>("change-photo"),
  removePhoto: $<HTMLButtonElement>("remove-photo"),
  likePanel: $("like-panel"),
  likeImg: $<HTMLImageElement>("like-img"),
  likeName: $("like-name"),
  likeMeta: $("like-meta"),
  backToPhoto: $<HTMLButtonElement>("back-to-photo"),
  controls: $<HTMLFormElement>("controls"),
  wordsForm: $<HTMLFormElement>("words-form"),
  wordsInput: $<HTMLInputElement>("words-input"),
  options: $<HTMLDetailsElement>("options"),
  optionsState: $("options-state"),
  model: $<HTMLSelectElement>("model-select"),
  modelInfo: $("model-info"),
  topK: $<HTMLSelectElement>("topk-select"),
  sameType: $<HTMLInputElement>("same-type"),
  sameGender: $<HTMLInputElement>("same-gender"),
  sameGenderHelp: $<HTMLElement>("same-gender-help"),
  clearFilters: $<HTMLButtonElement>("clear-filters"),
  results: $("results"),
  resultsTitle: $("results-title"),
  status: $("status"),
  error: $("error"),
  errorText: $("error-text"),
  errorRetry: $<HTMLButtonElement>("error-retry"),
  errorDismiss: $<HTMLButtonElement>("error-dismiss"),
  empty: $("empty"),
  grid: $<HTMLOListElement>("grid"),
  // the filters the form shows: one select per field, named by its data-field attribute
  filterSelects: [...document.querySelectorAll<HTMLSelectElement>("select[data-field]")],
};

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<HTMLElementTagNameMap[K]> & Record<string, unknown> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

// ----- messages ---------------------------------------------------------------------------------
export function showError(message: string, retryable: boolean): void {
  ui.errorText.textContent = message;
  ui.errorRetry.hidden = !retryable;
  ui.error.hidden = false;
}

export function hideError(): void {
  ui.error.hidden = true;
}

// ----- options ----------------------------------------------------------------------------------
export function renderOptionsState(store: Store): void {
  ui.optionsState.textContent = optionsSummary(store.view, store.reranks);
}

export function renderModels(store: Store, resp: ModelsResponse): void {
  ui.model.replaceChildren(...resp.models.map((m) => el("option", { value: m.name, textContent: modelLabel(m) })));
  ui.model.value = store.view.model ?? "";
  ui.model.disabled = resp.models.length === 0;
  renderOptionsState(store);
  renderModelInfo(store);
  ui.banner.hidden = !resp.synthetic_catalog;
  const size = store.model?.index_size;
  if (size) ui.tagline.textContent = tagline(size);
}

export function renderModelInfo(store: Store): void {
  const m = store.model;
  ui.modelInfo.textContent = m ? modelInfoText(m) : "";
  syncOrderControls(store);
}

export function renderTopK(store: Store): void {
  ui.topK.replaceChildren(
    ...topKOptions(store.view.topK).map((k) => el("option", { value: String(k), textContent: `${k} results` })),
  );
  ui.topK.value = String(store.view.topK);
}

export function renderFacets(store: Store, facets: Facets): void {
  for (const select of ui.filterSelects) {
    const field = select.dataset.field as string;
    const values = facets[field];
    select.closest(".field")?.toggleAttribute("hidden", values === undefined); // a field this catalog lacks
    const choices = facetChoices(values ?? [], store.view.filters[field]?.[0]);
    select.replaceChildren(...choices.map((c) => el("option", { value: c.value, textContent: c.label })));
    select.disabled = values === undefined;
  }
  syncFilterControls(store);
}

export function syncFilterControls(store: Store): void {
  for (const select of ui.filterSelects) select.value = store.view.filters[select.dataset.field as string]?.[0] ?? "";
  ui.clearFilters.hidden = !hasFilters(store.view.filters);
}

/** Every control set from the state (after a back/forward navigation). */
export function syncControls(store: Store): void {
  renderOptionsState(store);
  if (store.models) {
    ui.model.value = store.view.model ?? "";
    renderModelInfo(store);
  }
  renderTopK(store);
  syncOrderControls(store);
  ui.wordsInput.value = store.view.q;
  syncFilterControls(store);
}

/** The two ordering checkboxes from the state; "same gender first" is off and disabled for a model without a
 * gender predictor. */
export function syncOrderControls(store: Store): void {
  ui.sameType.checked = typeFirstIn(store.view.rerank);
  const supported = !store.models || (store.reranks ?? []).includes("gender"); // unknown until the models load
  ui.sameGender.checked = supported && genderFirstIn(store.view.rerank);
  ui.sameGender.disabled = !supported;
  ui.sameGenderHelp.textContent = supported
    ? GENDER_HELP
    : "Not with this model: it has no gender predictor (imageretrieval finetune-rerank --gender makes one) " +
      "or its index is PCA-whitened.";
}

const GENDER_HELP = "Products for the gender the photo looks like (and unisex ones) come first, within each type.";

// ----- the chosen photo -------------------------------------------------------------------------
const PREVIEW_MAX_HEIGHT = 320;
const PREVIEW_MAX_HEIGHT_PHONE = 240; // leaves room for the first results on a phone screen
const PREVIEW_MAX_UPSCALE = 4; // catalog-sized photos (60x80) are shown larger

/** Show `url` in the preview; false when the browser cannot decode it (it is still searchable). */
export function showPreview(url: string): Promise<boolean> {
  const img = ui.previewImg;
  ui.cropSurface.style.width = "";
  ui.dropEmpty.hidden = true;
  ui.preview.hidden = false;
  img.src = url;
  return img.decode().then(
    () => {
      const maxHeight = matchMedia("(min-width: 761px)").matches ? PREVIEW_MAX_HEIGHT : PREVIEW_MAX_HEIGHT_PHONE;
      const scale = Math.min(PREVIEW_MAX_UPSCALE, maxHeight / img.naturalHeight);
      ui.cropSurface.style.width = `min(100%, ${Math.round(img.naturalWidth * scale)}px)`;
      return true;
    },
    () => false,
  );
}

/** Back to the empty drop zone (the photo was removed). */
export function hidePreview(): void {
  ui.preview.hidden = true;
  ui.previewImg.removeAttribute("src");
  ui.dropEmpty.hidden = false;
}

export function renderPreviewDecoded(decoded: boolean): void {
  ui.cropSurface.hidden = !decoded;
  ui.noPreview.hidden = decoded;
}

export function renderCropCaption(cropped: boolean): void {
  ui.clearCrop.hidden = !cropped;
  ui.previewCaption.textContent = cropped
    ? "Searching only the boxed region. Drag again to change it."
    : "Drag on the photo to search only a region, like the shirt in a street photo.";
}

// ----- results ----------------------------------------------------------------------------------
export function renderLoading(store: Store, on: boolean): void {
  ui.results.setAttribute("aria-busy", String(on));
  ui.grid.classList.toggle("is-loading", on && ui.grid.childElementCount > 0);
  if (!on) return;
  ui.status.replaceChildren(el("span", { className: "spinner", ariaHidden: "true" }), "Searching…");
  if (ui.grid.childElementCount === 0) {
    ui.empty.replaceChildren();
    ui.grid.replaceChildren(
      ...Array.from({ length: Math.min(store.view.topK, 15) }, () => el("li", { className: "card skeleton", ariaHidden: "true" })),
    );
    ui.grid.dataset.skeleton = "true";
  }
}

/** The search failed: results of an earlier search do not stay on screen as if they answered this one. */
export function renderSearchFailed(): void {
  ui.grid.replaceChildren();
  delete ui.grid.dataset.skeleton;
  ui.status.textContent = "";
}

export function renderStart(): void {
  ui.grid.replaceChildren();
  ui.status.textContent = "";
  ui.empty.replaceChildren(
    el("div", { className: "empty-state" },
      el("p", { className: "empty-title", textContent: "Start with a photo" }),
      el("p", {
        textContent:
          "Choose, drop or paste a photo of a garment, shoe or accessory (a street photo works too: draw a box around the piece you like).",
      }),
    ),
  );
}

function renderNoResults(store: Store, onClearFilters: () => void): void {
  const children: (Node | string)[] = [el("p", { className: "empty-title", textContent: "No products match" })];
  if (hasFilters(store.view.filters)) {
    children.push(el("p", { textContent: "No product of the catalog passes these filters." }));
    const clear = el("button", { type: "button", className: "btn", textContent: "Clear filters" });
    clear.addEventListener("click", onClearFilters);
    children.push(clear);
  } else {
    children.push(el("p", { textContent: "The catalog returned nothing for this search." }));
  }
  ui.empty.replaceChildren(el("div", { className: "empty-state" }, ...children));
}

function card(r: SearchResult, onMoreLikeThis: (p: Product) => void): HTMLLIElement {
  const name = r.productDisplayName || `Product ${r.id}`;
  const img = el("img", {
    src: r.image_url ? resolveImageUrl(r.image_url) : imageUrl(r.id),
    alt: `${name}${describe(r) ? ` (${describe(r)})` : ""}`,
    loading: "lazy",
    decoding: "async",
    width: 120,
    height: 160,
  });
  img.addEventListener("error", () => img.closest(".thumb")?.classList.add("broken"), { once: true });
  const thumb = el("div", { className: "thumb", title: "More like this" }, img);
  thumb.addEventListener("click", () => onMoreLikeThis(r));
  const more = el("button", { type: "button", className: "btn btn-small more", textContent: "More like this" });
  more.setAttribute("aria-label", `More like this: ${name}`);
  more.addEventListener("click", () => onMoreLikeThis(r));
  const fill = el("span");
  fill.style.width = `${(Math.max(0, Math.min(1, r.score)) * 100).toFixed(1)}%`;
  const bar = el("span", { className: "score-bar", ariaHidden: "true" }, fill);
  const li = el(
    "li",
    { className: "card" },
    thumb,
    el("div", { className: "card-body" },
      el("p", { className: "rank", textContent: `#${r.rank}` }),
      el("h3", { className: "name", textContent: name }),
      el("p", { className: "meta", textContent: describe(r) }),
      el("p", { className: "score" }, el("span", { textContent: `Similarity ${r.score.toFixed(3)}` }), bar),
      more,
    ),
  );
  li.dataset.id = String(r.id);
  li.dataset.rank = String(r.rank);
  return li;
}

export function renderResults(
  store: Store, resp: SearchResponse, onMoreLikeThis: (p: Product) => void, onClearFilters: () => void,
): void {
  delete ui.grid.dataset.skeleton;
  ui.grid.replaceChildren(...resp.results.map((r) => card(r, onMoreLikeThis)));
  ui.empty.replaceChildren();
  ui.status.textContent = resultsStatus(resp, store.view);
  if (!resp.results.length) renderNoResults(store, onClearFilters);
}

/** The "more like this" panel: the product searched with, or hidden for a photo search. */
export function renderLikePanel(store: Store): void {
  const id = store.view.likeId;
  ui.likePanel.hidden = id === null;
  ui.preview.classList.toggle("dimmed", id !== null);
  ui.resultsTitle.textContent = id === null ? "Similar products" : "More like this";
  if (id === null) return;
  ui.backToPhoto.textContent = store.image ? "Back to your photo" : "Search with a photo instead";
  const p = store.known.get(id);
  ui.likeImg.src = p?.image_url ? resolveImageUrl(p.image_url) : imageUrl(id);
  ui.likeImg.alt = p?.productDisplayName ?? `Product ${id}`;
  ui.likeName.textContent = p?.productDisplayName ?? `Product ${id}`;
  ui.likeMeta.textContent = p ? describe(p) : "";
}
