// What the user does: every event listener of the page, turned into calls of `Actions`.

import { ui } from "./render";

export interface Actions {
  choosePhoto(file: File, fallbackName: string): void;
  refuseDrop(): void;
  clearCrop(): void;
  removePhoto(): void;
  backToPhoto(): void;
  setModel(name: string): void;
  setTopK(k: number): void;
  setSameTypeFirst(on: boolean): void;
  setSameGenderFirst(on: boolean): void;
  setFilter(field: string, value: string): void;
  clearFilters(): void;
  search(): void;
  searchWords(text: string): void;
  dismissError(): void;
  retry(): void;
  navigated(): void;
}

export function bindControls(actions: Actions): void {
  ui.pick.addEventListener("click", () => ui.fileInput.click());
  ui.changePhoto.addEventListener("click", () => ui.fileInput.click());
  ui.camera.addEventListener("click", () => ui.cameraInput.click());
  ui.camera.hidden = !matchMedia("(pointer: coarse)").matches;
  ui.dropEmpty.addEventListener("click", (e) => {
    if (e.target === ui.dropEmpty || !(e.target as HTMLElement).closest("button")) ui.fileInput.click();
  });
  for (const input of [ui.fileInput, ui.cameraInput]) {
    input.addEventListener("change", () => {
      const file = input.files?.[0];
      if (file) actions.choosePhoto(file, "photo");
      input.value = ""; // choosing the same file again still triggers a search
    });
  }
  bindDragAndPaste(actions);

  ui.clearCrop.addEventListener("click", () => actions.clearCrop());
  ui.removePhoto.addEventListener("click", () => actions.removePhoto());
  ui.backToPhoto.addEventListener("click", () => actions.backToPhoto());
  ui.model.addEventListener("change", () => actions.setModel(ui.model.value));
  ui.topK.addEventListener("change", () => actions.setTopK(Number.parseInt(ui.topK.value, 10)));
  ui.sameType.addEventListener("change", () => actions.setSameTypeFirst(ui.sameType.checked));
  ui.sameGender.addEventListener("change", () => actions.setSameGenderFirst(ui.sameGender.checked));
  for (const select of ui.filterSelects) {
    select.addEventListener("change", () => actions.setFilter(select.dataset.field as string, select.value));
  }
  ui.clearFilters.addEventListener("click", () => actions.clearFilters());
  ui.controls.addEventListener("submit", (e) => {
    e.preventDefault();
    actions.search();
  });
  ui.wordsForm.addEventListener("submit", (e) => {
    e.preventDefault();
    actions.searchWords(ui.wordsInput.value);
    if (matchMedia("(pointer: coarse)").matches) ui.wordsInput.blur(); // a phone's keyboard closes to show the results
  });
  ui.errorDismiss.addEventListener("click", () => actions.dismissError());
  ui.errorRetry.addEventListener("click", () => actions.retry());
  window.addEventListener("popstate", () => actions.navigated());
  bindOptionsFold();
}

function bindDragAndPaste(actions: Actions): void {
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
    if (file) actions.choosePhoto(file, "photo");
    else actions.refuseDrop();
  });
  document.addEventListener("paste", (e) => {
    const items = [...(e.clipboardData?.items ?? [])];
    const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/")) ?? items.find((i) => i.kind === "file");
    const file = item?.getAsFile();
    if (!file) return;
    e.preventDefault();
    actions.choosePhoto(file, "pasted.png");
  });
}

/** Phones: the options fold away under a summary ("tiny · 15 results · 1 filter"); wider screens
 * always show them. */
function bindOptionsFold(): void {
  const wide = matchMedia("(min-width: 761px)");
  const summary = ui.options.querySelector("summary") as HTMLElement;
  const sync = () => {
    ui.options.open = wide.matches || ui.options.dataset.userOpened === "true";
    ui.options.classList.toggle("always-open", wide.matches);
    summary.tabIndex = wide.matches ? -1 : 0;
  };
  wide.addEventListener("change", sync);
  ui.options.addEventListener("toggle", () => {
    if (wide.matches && !ui.options.open) ui.options.open = true;
    else if (!wide.matches) ui.options.dataset.userOpened = String(ui.options.open);
  });
  sync();
}
