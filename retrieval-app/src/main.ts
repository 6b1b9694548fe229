import "./style.css";

import {
  ApiError,
  type Facets,
  type FilterField,
  getFacets,
  getModels,
  getProduct,
  imageUrl,
  type ModelInfo,
  type ModelsResponse,
  type Product,
  type SearchResponse,
  type SearchResult,
  searchById,
  searchByImage,
} from "./api";
import { cropImage, Cropper, downscaleImage } from "./cropper";
import { hasFilters, parseState, stateToSearch, TOP_K_CHOICES, type ViewState } from "./url-state";

// Filters shown in the form (the API accepts more; values in the URL for others are kept).
const FORM_FILTERS: FilterField[] = ["gender", "masterCategory", "articleType", "baseColour"];
// Browsers decode most images; bigger files than this are downscaled before upload.
const DOWNSCALE_OVER_BYTES = 8 * 1024 * 1024;
const DOWNSCALE_MAX_SIDE = 2048;
const SESSION_KEY = "lookalike.photo";
const SESSION_MAX_BYTES = 1_500_000;

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`missing #${id}`);
  return el as T;
};

const ui = {
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
  likePanel: $("like-panel"),
  likeImg: $<HTMLImageElement>("like-img"),
  likeName: $("like-name"),
  likeMeta: $("like-meta"),
  backToPhoto: $<HTMLButtonElement>("back-to-photo"),
  controls: $<HTMLFormElement>("controls"),
  options: $<HTMLDetailsElement>("options"),
  optionsState: $("options-state"),
  model: $<HTMLSelectElement>("model-select"),
  modelInfo: $("model-info"),
  topK: $<HTMLSelectElement>("topk-select"),
  sameType: $<HTMLInputElement>("same-type"),
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
};
const filterSelects = Object.fromEntries(
  FORM_FILTERS.map((f) => [f, $<HTMLSelectElement>(`filter-${f}`)]),
) as Record<FilterField, HTMLSelectElement>;

interface ImageQuery {
  blob: Blob;
  name: string;
  url: string;
  decoded: boolean;
}

let state: ViewState = parseState(location.search);
let models: ModelsResponse | null = null;
let imageQuery: ImageQuery | null = null;
let inflight: AbortController | null = null;
let retryAction: (() => void) | null = null;
const known = new Map<number, Product>(); // products seen in results, for the "more like this" panel

const cropper = new Cropper(ui.cropSurface, () => {
  ui.clearCrop.hidden = cropper.value === null;
  ui.previewCaption.textContent = cropper.value
    ? "Searching only the boxed region. Drag again to change it."
    : "Drag on the photo to search only a region, like the shirt in a street photo.";
  void runSearch();
});

// ----- small helpers -----------------------------------------------------------------------
const fmt = new Intl.NumberFormat();

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<HTMLElementTagNameMap[K]> & Record<string, unknown> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  Object.assign(node, props);
  node.append(...children);
  return node;
}

function describe(p: Product): string {
  return [p.articleType, p.baseColour, p.gender].filter(Boolean).join(" · ");
}

function showError(message: string, retry: (() => void) | null = null): void {
  ui.errorText.textContent = message;
  retryAction = retry;
  ui.errorRetry.hidden = retry === null;
  ui.error.hidden = false;
}

function clearError(): void {
  ui.error.hidden = true;
  retryAction = null;
}

function errorMessage(err: unknown): string {
  if (err instanceof ApiError || err instanceof Error) return err.message;
  return "Something went wrong. Please try again.";
}

function renderOptionsState(): void {
  const n = Object.values(state.filters).reduce((sum, v) => sum + (v?.length ?? 0), 0);
  const parts = [state.model ?? "", `${state.topK} results`];
  if (n) parts.push(`${n} ${n === 1 ? "filter" : "filters"}`);
  if (state.rerank === "none") parts.push("by look only");
  ui.optionsState.textContent = parts.filter(Boolean).join(" · ");
}

function updateUrl(push = false): void {
  renderOptionsState();
  const url = `${location.pathname}${stateToSearch(state)}${location.hash}`;
  if (url === `${location.pathname}${location.search}${location.hash}`) return;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

// ----- models, K and filters ---------------------------------------------------------------
function evaluationText(m: ModelInfo): string {
  const e = m.evaluation;
  if (!e) return "not evaluated yet";
  return Object.entries(e)
    .filter(([, v]) => typeof v === "number")
    .slice(0, 2)
    .map(([k, v]) => `${k} ${v.toFixed(3)}`)
    .join(", ");
}

function renderModels(resp: ModelsResponse): void {
  ui.model.replaceChildren(
    ...resp.models.map((m) => {
      const score = m.evaluation && typeof m.evaluation.mAP === "number" ? ` · mAP ${m.evaluation.mAP.toFixed(3)}` : "";
      return el("option", { value: m.name, textContent: `${m.name}${score}${m.default ? " (default)" : ""}` });
    }),
  );
  if (!state.model || !resp.models.some((m) => m.name === state.model)) {
    state.model = resp.default || resp.models[0]?.name || null;
    updateUrl();
  }
  ui.model.value = state.model ?? "";
  ui.model.disabled = resp.models.length === 0;
  renderOptionsState();
  renderModelInfo();
  ui.banner.hidden = !resp.synthetic_catalog;
  const size = resp.models.find((m) => m.name === state.model)?.index_size;
  if (size) ui.tagline.textContent = `Find fashion that looks like your photo among ${fmt.format(size)} products`;
}

function renderModelInfo(): void {
  const m = models?.models.find((x) => x.name === state.model);
  ui.modelInfo.textContent = m
    ? `${m.description ? `${m.description}. ` : ""}${m.backbone}, ${m.dims} dims, ${fmt.format(m.index_size)} products. ` +
      `Evaluation: ${evaluationText(m)}.`
    : "";
}

function renderTopK(): void {
  const choices = new Set<number>(TOP_K_CHOICES);
  choices.add(state.topK);
  ui.topK.replaceChildren(
    ...[...choices].sort((a, b) => a - b).map((k) => el("option", { value: String(k), textContent: `${k} results` })),
  );
  ui.topK.value = String(state.topK);
}

function renderFacets(facets: Facets): void {
  for (const field of FORM_FILTERS) {
    const select = filterSelects[field];
    const values = facets[field] ?? [];
    const options = [el("option", { value: "", textContent: "Any" })];
    for (const v of values) {
      if (!v.value) continue;
      options.push(el("option", { value: v.value, textContent: `${v.value} (${fmt.format(v.count)})` }));
    }
    const current = state.filters[field]?.[0];
    if (current && !values.some((v) => v.value === current)) {
      options.push(el("option", { value: current, textContent: current }));
    }
    select.replaceChildren(...options);
    select.disabled = false;
  }
  syncFilterControls();
}

function syncFilterControls(): void {
  for (const field of FORM_FILTERS) filterSelects[field].value = state.filters[field]?.[0] ?? "";
  ui.clearFilters.hidden = !hasFilters(state.filters);
}

function syncControls(): void {
  renderOptionsState();
  if (models) {
    ui.model.value = state.model ?? "";
    renderModelInfo();
  }
  renderTopK();
  ui.sameType.checked = state.rerank === "category";
  syncFilterControls();
}

// ----- choosing an image ---------------------------------------------------------------------
const PREVIEW_MAX_HEIGHT = 320;
const PREVIEW_MAX_HEIGHT_PHONE = 240; // leaves room for the first results on a phone screen
const PREVIEW_MAX_UPSCALE = 4; // catalog-sized photos (60x80) are shown larger

function decode(url: string): Promise<boolean> {
  const img = ui.previewImg;
  ui.cropSurface.style.width = "";
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

async function setImage(blob: Blob, name: string, persist = true): Promise<void> {
  clearError();
  if (imageQuery) URL.revokeObjectURL(imageQuery.url);
  const url = URL.createObjectURL(blob);
  imageQuery = { blob, name, url, decoded: false };
  cropper.set(null);
  ui.clearCrop.hidden = true;
  ui.dropEmpty.hidden = true;
  ui.preview.hidden = false;
  const decoded = await decode(url);
  if (imageQuery?.url !== url) return; // another image was chosen meanwhile
  imageQuery.decoded = decoded;
  ui.cropSurface.hidden = !decoded;
  ui.noPreview.hidden = decoded;
  ui.previewCaption.hidden = !decoded;
  ui.previewCaption.textContent = "Drag on the photo to search only a region, like the shirt in a street photo.";
  if (persist) rememberImage(blob, name);
  if (state.likeId !== null) {
    state.likeId = null;
    updateUrl(true);
  }
  await runSearch();
}

function takeFile(file: File | null | undefined): void {
  if (!file) return;
  void setImage(file, file.name || "photo");
}

function rememberImage(blob: Blob, name: string): void {
  try {
    sessionStorage.removeItem(SESSION_KEY);
    if (blob.size > SESSION_MAX_BYTES) return;
    const reader = new FileReader();
    reader.onload = () => {
      try {
        sessionStorage.setItem(SESSION_KEY, JSON.stringify({ name, data: reader.result }));
      } catch {
        // storage full or disabled: a reload just asks for the photo again
      }
    };
    reader.readAsDataURL(blob);
  } catch {
    // sessionStorage unavailable (privacy mode): nothing to remember
  }
}

async function restoreImage(): Promise<boolean> {
  try {
    const saved = sessionStorage.getItem(SESSION_KEY);
    if (!saved) return false;
    const { name, data } = JSON.parse(saved) as { name: string; data: string };
    const blob = await (await fetch(data)).blob();
    if (imageQuery) return true; // the user chose a photo while this was loading
    imageQuery = { blob, name, url: URL.createObjectURL(blob), decoded: false };
    ui.dropEmpty.hidden = true;
    ui.preview.hidden = false;
    imageQuery.decoded = await decode(imageQuery.url);
    ui.cropSurface.hidden = !imageQuery.decoded;
    ui.noPreview.hidden = imageQuery.decoded;
    return true;
  } catch {
    return false;
  }
}

async function uploadBlob(q: ImageQuery): Promise<{ blob: Blob; name: string }> {
  const box = cropper.value;
  if (q.decoded && box) return { blob: await cropImage(ui.previewImg, box), name: "crop.jpg" };
  if (q.decoded && q.blob.size > DOWNSCALE_OVER_BYTES) {
    return { blob: await downscaleImage(ui.previewImg, DOWNSCALE_MAX_SIDE), name: "photo.jpg" };
  }
  return { blob: q.blob, name: q.name };
}

// ----- searching ------------------------------------------------------------------------------
function searchOptions() {
  return { model: state.model ?? "", topK: state.topK, filters: state.filters, rerank: state.rerank };
}

function setLoading(on: boolean): void {
  ui.results.setAttribute("aria-busy", String(on));
  ui.grid.classList.toggle("is-loading", on && ui.grid.childElementCount > 0);
  if (on) {
    ui.status.replaceChildren(el("span", { className: "spinner", ariaHidden: "true" }), "Searching…");
    if (ui.grid.childElementCount === 0) {
      ui.empty.replaceChildren();
      ui.grid.replaceChildren(
        ...Array.from({ length: Math.min(state.topK, 15) }, () => el("li", { className: "card skeleton", ariaHidden: "true" })),
      );
      ui.grid.dataset.skeleton = "true";
    }
  }
}

function renderStart(): void {
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

function renderNoResults(): void {
  const children: (Node | string)[] = [el("p", { className: "empty-title", textContent: "No products match" })];
  if (hasFilters(state.filters)) {
    children.push(el("p", { textContent: "No product of the catalog passes these filters." }));
    const clear = el("button", { type: "button", className: "btn", textContent: "Clear filters" });
    clear.addEventListener("click", clearAllFilters);
    children.push(clear);
  } else {
    children.push(el("p", { textContent: "The catalog returned nothing for this search." }));
  }
  ui.empty.replaceChildren(el("div", { className: "empty-state" }, ...children));
}

function card(r: SearchResult): HTMLLIElement {
  const name = r.productDisplayName || `Product ${r.id}`;
  const img = el("img", {
    src: r.image_url || imageUrl(r.id),
    alt: `${name}${describe(r) ? ` (${describe(r)})` : ""}`,
    loading: "lazy",
    decoding: "async",
    width: 120,
    height: 160,
  });
  img.addEventListener("error", () => img.closest(".thumb")?.classList.add("broken"), { once: true });
  const thumb = el("div", { className: "thumb", title: "More like this" }, img);
  thumb.addEventListener("click", () => moreLikeThis(r));
  const more = el("button", { type: "button", className: "btn btn-small more", textContent: "More like this" });
  more.setAttribute("aria-label", `More like this: ${name}`);
  more.addEventListener("click", () => moreLikeThis(r));
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

function renderResults(resp: SearchResponse): void {
  delete ui.grid.dataset.skeleton;
  for (const r of resp.results) known.set(r.id, r);
  ui.grid.replaceChildren(...resp.results.map(card));
  ui.empty.replaceChildren();
  const n = resp.results.length;
  const all = n > 0 && n < state.topK && hasFilters(state.filters) ? " (every product that passes the filters)" : "";
  const first = resp.type_first ? ` · ${resp.type_first} first` : "";
  ui.status.textContent = n
    ? `${n} ${n === 1 ? "result" : "results"}${all} in ${Math.round(resp.took_ms)} ms with ${resp.model}${first}`
    : "";
  if (!n) renderNoResults();
}

async function runSearch(): Promise<void> {
  inflight?.abort();
  if (!models || !state.model) return; // the search starts when the models have loaded
  renderLikePanel();
  if (state.likeId === null && !imageQuery) {
    renderStart();
    return;
  }
  const controller = new AbortController();
  inflight = controller;
  clearError();
  setLoading(true);
  try {
    let resp: SearchResponse;
    if (state.likeId !== null) {
      resp = await searchById(state.likeId, searchOptions(), controller.signal);
    } else {
      const { blob, name } = await uploadBlob(imageQuery as ImageQuery);
      resp = await searchByImage(blob, name, searchOptions(), controller.signal);
    }
    if (controller.signal.aborted) return;
    renderResults(resp);
  } catch (err) {
    if (controller.signal.aborted || (err instanceof DOMException && err.name === "AbortError")) return;
    if (ui.grid.dataset.skeleton) ui.grid.replaceChildren();
    ui.status.textContent = "";
    showError(errorMessage(err), err instanceof ApiError && err.status >= 400 && err.status < 500 ? null : runSearch);
  } finally {
    if (inflight === controller) {
      inflight = null;
      setLoading(false);
    }
  }
}

// ----- "more like this" -------------------------------------------------------------------------
function moreLikeThis(p: Product): void {
  known.set(p.id, p);
  state.likeId = p.id;
  updateUrl(true);
  void runSearch();
  ui.results.focus({ preventScroll: true }); // the clicked card is replaced: keep keyboard focus nearby
  ui.results.scrollIntoView({ behavior: matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth" });
}

function renderLikePanel(): void {
  const id = state.likeId;
  ui.likePanel.hidden = id === null;
  ui.preview.classList.toggle("dimmed", id !== null);
  ui.resultsTitle.textContent = id === null ? "Similar products" : "More like this";
  if (id === null) return;
  ui.backToPhoto.textContent = imageQuery ? "Back to your photo" : "Search with a photo instead";
  const p = known.get(id);
  ui.likeImg.src = imageUrl(id);
  ui.likeImg.alt = p?.productDisplayName ?? `Product ${id}`;
  ui.likeName.textContent = p?.productDisplayName ?? `Product ${id}`;
  ui.likeMeta.textContent = p ? describe(p) : "";
  if (!p) {
    getProduct(id).then(
      (prod) => {
        known.set(id, prod);
        if (state.likeId === id) renderLikePanel();
      },
      () => undefined, // the search itself reports an unknown product
    );
  }
}

function clearAllFilters(): void {
  state.filters = {};
  syncFilterControls();
  updateUrl();
  void runSearch();
}

// ----- events -----------------------------------------------------------------------------------
ui.pick.addEventListener("click", () => ui.fileInput.click());
ui.changePhoto.addEventListener("click", () => ui.fileInput.click());
ui.camera.addEventListener("click", () => ui.cameraInput.click());
ui.camera.hidden = !matchMedia("(pointer: coarse)").matches;
ui.dropEmpty.addEventListener("click", (e) => {
  if (e.target === ui.dropEmpty || !(e.target as HTMLElement).closest("button")) ui.fileInput.click();
});
for (const input of [ui.fileInput, ui.cameraInput]) {
  input.addEventListener("change", () => {
    takeFile(input.files?.[0]);
    input.value = ""; // choosing the same file again still triggers a search
  });
}

let dragDepth = 0;
document.addEventListener("dragenter", (e) => {
  if (!e.dataTransfer?.types.includes("Files")) return;
  dragDepth += 1;
  ui.dropzone.classList.add("dragging");
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) ui.dropzone.classList.remove("dragging");
});
document.addEventListener("dragover", (e) => {
  if (e.dataTransfer?.types.includes("Files")) e.preventDefault();
});
document.addEventListener("drop", (e) => {
  dragDepth = 0;
  ui.dropzone.classList.remove("dragging");
  if (!e.dataTransfer) return;
  e.preventDefault();
  const file = e.dataTransfer.files[0];
  if (file) takeFile(file);
  else showError("Drop an image file (a picture from another web page must be saved to your device first).");
});
document.addEventListener("paste", (e) => {
  const items = [...(e.clipboardData?.items ?? [])];
  const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/")) ?? items.find((i) => i.kind === "file");
  const file = item?.getAsFile();
  if (!file) return;
  e.preventDefault();
  void setImage(file, file.name || "pasted.png");
});

ui.clearCrop.addEventListener("click", () => cropper.set(null, true));
ui.backToPhoto.addEventListener("click", () => {
  state.likeId = null;
  updateUrl(true);
  if (!imageQuery) ui.fileInput.click();
  void runSearch();
});

ui.model.addEventListener("change", () => {
  state.model = ui.model.value;
  renderModelInfo();
  updateUrl();
  void runSearch();
});
ui.topK.addEventListener("change", () => {
  state.topK = Number.parseInt(ui.topK.value, 10);
  updateUrl();
  void runSearch();
});
ui.sameType.addEventListener("change", () => {
  state.rerank = ui.sameType.checked ? "category" : "none";
  updateUrl();
  void runSearch();
});
for (const field of FORM_FILTERS) {
  filterSelects[field].addEventListener("change", () => {
    const v = filterSelects[field].value;
    state.filters = { ...state.filters, [field]: v ? [v] : [] };
    if (!v) delete state.filters[field];
    ui.clearFilters.hidden = !hasFilters(state.filters);
    updateUrl();
    void runSearch();
  });
}
ui.clearFilters.addEventListener("click", clearAllFilters);
ui.controls.addEventListener("submit", (e) => {
  e.preventDefault();
  void runSearch();
});
ui.errorDismiss.addEventListener("click", clearError);
ui.errorRetry.addEventListener("click", () => {
  const retry = retryAction;
  clearError();
  retry?.();
});
window.addEventListener("popstate", () => {
  state = parseState(location.search);
  syncControls();
  void runSearch();
});

// ----- start --------------------------------------------------------------------------------------
async function loadCatalogInfo(): Promise<void> {
  clearError();
  ui.status.textContent = "Loading models…";
  try {
    const [m, f] = await Promise.all([getModels(), getFacets()]);
    models = m;
    renderModels(m);
    renderFacets(f);
    ui.status.textContent = "";
    if (m.models.length === 0) {
      showError("The search service has no model with a built index yet. Run `imageretrieval index` and reload.");
      return;
    }
  } catch (err) {
    ui.status.textContent = "";
    showError(`Could not load the catalog: ${errorMessage(err)}`, () => void loadCatalogInfo());
    return;
  }
  if (state.likeId === null) await restoreImage();
  await runSearch();
}

const wide = matchMedia("(min-width: 761px)");
// Phones: the options fold away under a summary ("tiny · 15 results · 1 filter"); wider screens
// always show them.
const optionsSummary = ui.options.querySelector("summary") as HTMLElement;
const syncOptionsOpen = () => {
  ui.options.open = wide.matches || ui.options.dataset.userOpened === "true";
  ui.options.classList.toggle("always-open", wide.matches);
  optionsSummary.tabIndex = wide.matches ? -1 : 0;
};
wide.addEventListener("change", syncOptionsOpen);
ui.options.addEventListener("toggle", () => {
  if (wide.matches && !ui.options.open) ui.options.open = true;
  else if (!wide.matches) ui.options.dataset.userOpened = String(ui.options.open);
});
syncOptionsOpen();

renderTopK();
ui.sameType.checked = state.rerank === "category";
syncFilterControls();
renderOptionsState();
renderStart();
void loadCatalogInfo();
