// The app's flow: load the catalog's models and facets, search when something changes, keep the
// URL in step. State: store.ts; drawing: render.ts; user input: controls.ts; the API: api.ts.
import "./style.css";

import {
  getFacets,
  getModels,
  getProduct,
  type Product,
  type SearchResponse,
  searchById,
  searchByImage,
  searchByText,
} from "./api";
import { bindControls } from "./controls";
import { cropImage, Cropper, downscaleImage } from "./cropper";
import { errorMessage, isTransient } from "./format";
import * as render from "./render";
import { ui } from "./render";
import { genderFirstIn, rerankOf, typeFirstIn } from "./state";
import { type ImageQuery, Store } from "./store";

// Browsers decode most images; bigger files than this are downscaled before upload.
const DOWNSCALE_OVER_BYTES = 8 * 1024 * 1024;
const DOWNSCALE_MAX_SIDE = 2048;
const SESSION_KEY = "lookalike.photo";
const SESSION_MAX_BYTES = 1_500_000;

const store = new Store(location.search);
let inflight: AbortController | null = null;
let retryAction: (() => void) | null = null;
let catalogLoading = false;

const cropper = new Cropper(ui.cropSurface, () => {
  render.renderCropCaption(cropper.value !== null);
  void runSearch();
});

function showError(message: string, retry: (() => void) | null = null): void {
  retryAction = retry;
  render.showError(message, retry !== null);
}

function clearError(): void {
  retryAction = null;
  render.hideError();
}

function updateUrl(push = false): void {
  render.renderOptionsState(store);
  const url = `${location.pathname}${store.search}${location.hash}`;
  if (url === `${location.pathname}${location.search}${location.hash}`) return;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

// ----- the photo ----------------------------------------------------------------------------------
async function setImage(blob: Blob, name: string, persist = true): Promise<void> {
  clearError();
  const image: ImageQuery = { blob, name, url: URL.createObjectURL(blob), decoded: false };
  const previous = store.setImage(image);
  if (previous) URL.revokeObjectURL(previous.url);
  cropper.set(null);
  ui.clearCrop.hidden = true;
  const decoded = await render.showPreview(image.url);
  if (store.image !== image) return; // another image was chosen meanwhile
  image.decoded = decoded;
  render.renderPreviewDecoded(decoded);
  ui.previewCaption.hidden = !decoded;
  render.renderCropCaption(false);
  if (persist) rememberImage(blob, name);
  if (store.view.likeId !== null) {
    store.setLike(null);
    updateUrl(true);
  }
  await runSearch();
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

async function restoreImage(): Promise<void> {
  try {
    const saved = sessionStorage.getItem(SESSION_KEY);
    if (!saved) return;
    const { name, data } = JSON.parse(saved) as { name: string; data: string };
    const blob = dataUrlToBlob(data);
    if (store.image) return; // the user chose a photo while this was loading
    const image: ImageQuery = { blob, name, url: URL.createObjectURL(blob), decoded: false };
    store.setImage(image);
    image.decoded = await render.showPreview(image.url);
    render.renderPreviewDecoded(image.decoded);
  } catch {
    // nothing saved, or unreadable: the app starts empty
  }
}

function dataUrlToBlob(data: string): Blob {
  const [head, base64 = ""] = data.split(",", 2);
  const type = /^data:([^;,]+)/.exec(head)?.[1] ?? "application/octet-stream";
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

function removeImage(): void {
  const previous = store.setImage(null);
  if (previous) URL.revokeObjectURL(previous.url);
  cropper.set(null);
  render.hidePreview();
  try {
    sessionStorage.removeItem(SESSION_KEY);
  } catch {
    // sessionStorage unavailable: nothing was saved
  }
  void runSearch(); // the words alone, if any; else the start screen
  ui.pick.focus();
}

async function uploadBlob(q: ImageQuery): Promise<{ blob: Blob; name: string }> {
  const box = cropper.value;
  if (q.decoded && box) return { blob: await cropImage(ui.previewImg, box, DOWNSCALE_MAX_SIDE), name: "crop.jpg" };
  if (q.decoded && q.blob.size > DOWNSCALE_OVER_BYTES) {
    return { blob: await downscaleImage(ui.previewImg, DOWNSCALE_MAX_SIDE), name: "photo.jpg" };
  }
  return { blob: q.blob, name: q.name };
}

// ----- searching ------------------------------------------------------------------------------------
async function runSearch(): Promise<void> {
  inflight?.abort();
  if (!store.models) {
    // the search starts when the models have loaded; if loading them failed, this tries again
    if (!catalogLoading) void loadCatalogInfo();
    return;
  }
  if (!store.view.model) return; // the service has no model: loadCatalogInfo said so
  showLikePanel();
  if (store.view.likeId === null && !store.image && !store.view.q) {
    render.renderStart();
    return;
  }
  const controller = new AbortController();
  inflight = controller;
  clearError();
  render.renderLoading(store, true);
  try {
    let resp: SearchResponse;
    if (store.view.likeId !== null) {
      resp = await searchById(store.view.likeId, store.searchOptions(), controller.signal);
    } else if (store.image) {
      const { blob, name } = await uploadBlob(store.image);
      resp = await searchByImage(blob, name, store.searchOptions(), controller.signal, store.view.q);
    } else {
      resp = await searchByText(store.view.q, store.searchOptions(), controller.signal);
    }
    if (controller.signal.aborted) return;
    for (const r of resp.results) store.known.set(r.id, r);
    render.renderResults(store, resp, moreLikeThis, clearAllFilters);
  } catch (err) {
    if (controller.signal.aborted || (err instanceof DOMException && err.name === "AbortError")) return;
    render.renderSearchFailed();
    showError(errorMessage(err), isTransient(err) ? runSearch : null);
  } finally {
    if (inflight === controller) {
      inflight = null;
      render.renderLoading(store, false);
    }
  }
}

function showLikePanel(): void {
  render.renderLikePanel(store);
  const id = store.view.likeId;
  if (id === null || store.known.has(id)) return;
  getProduct(id).then(
    (product) => {
      store.known.set(id, product);
      if (store.view.likeId === id) render.renderLikePanel(store);
    },
    () => undefined, // the search itself reports an unknown product
  );
}

function moreLikeThis(p: Product): void {
  store.setLike(p);
  updateUrl(true);
  void runSearch();
  ui.results.focus({ preventScroll: true }); // the clicked card is replaced: keep keyboard focus nearby
  ui.results.scrollIntoView({ behavior: matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth" });
}

function clearAllFilters(): void {
  store.clearFilters();
  render.syncFilterControls(store);
  updateUrl();
  void runSearch();
}

// ----- start --------------------------------------------------------------------------------------
bindControls({
  choosePhoto: (file, fallbackName) => void setImage(file, file.name || fallbackName),
  refuseDrop: () => showError("Drop an image file (a picture from another web page must be saved to your device first)."),
  clearCrop: () => cropper.set(null, true),
  removePhoto: removeImage,
  backToPhoto: () => {
    store.setLike(null);
    updateUrl(true);
    if (!store.image) ui.fileInput.click();
    void runSearch();
  },
  setModel: (name) => {
    store.setModel(name);
    render.renderModelInfo(store);
    updateUrl();
    void runSearch();
  },
  setTopK: (k) => {
    store.setTopK(k);
    updateUrl();
    void runSearch();
  },
  setSameTypeFirst: (on) => {
    store.setRerank(rerankOf(on, genderFirstIn(store.view.rerank))); // kept for models that can order by gender
    updateUrl();
    void runSearch();
  },
  setSameGenderFirst: (on) => {
    store.setRerank(rerankOf(typeFirstIn(store.view.rerank), on));
    updateUrl();
    void runSearch();
  },
  setFilter: (field, value) => {
    store.setFilter(field, value);
    render.syncFilterControls(store);
    updateUrl();
    void runSearch();
  },
  clearFilters: clearAllFilters,
  search: () => void runSearch(),
  searchWords: (text) => {
    store.setQuery(text);
    if (store.view.likeId !== null) store.setLike(null);
    render.syncControls(store);
    updateUrl(true);
    void runSearch();
  },
  dismissError: clearError,
  retry: () => {
    const retry = retryAction;
    clearError();
    retry?.();
  },
  navigated: () => {
    if (location.search === store.search) return; // only the hash moved (the "skip to results" link)
    store.restore(location.search);
    render.syncControls(store);
    void runSearch();
  },
});

async function loadCatalogInfo(): Promise<void> {
  catalogLoading = true;
  clearError();
  ui.status.textContent = "Loading models…";
  try {
    const [models, facets] = await Promise.all([getModels(), getFacets()]);
    store.useModels(models);
    store.useFacets(facets);
    updateUrl();
    render.renderModels(store, models);
    render.renderFacets(store, facets);
    ui.status.textContent = "";
    if (models.models.length === 0) {
      showError("The search service has no model with a built index yet. Run `imageretrieval index` and reload.");
      return;
    }
  } catch (err) {
    ui.status.textContent = "";
    showError(`Could not load the catalog: ${errorMessage(err)}`, () => void loadCatalogInfo());
    return;
  } finally {
    catalogLoading = false;
  }
  await restoreImage(); // also under "more like this": "Back to your photo" needs it after a reload
  await runSearch();
}

render.renderTopK(store);
render.syncOrderControls(store);
ui.wordsInput.value = store.view.q;
render.syncFilterControls(store);
render.renderOptionsState(store);
render.renderStart();
void loadCatalogInfo();
