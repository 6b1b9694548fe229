// A crop box drawn over the preview: drag with a mouse, finger or pen; arrow keys move it,
// Shift+arrows resize it, Escape removes it. Coordinates are fractions of the image (0..1).

export interface CropBox {
  x: number;
  y: number;
  w: number;
  h: number;
}

const MIN_SIZE = 0.04; // a smaller drag is a click, not a crop
const KEY_SETTLE_MS = 300; // arrow-key steps in a row search once, when they stop
const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));
const sameBox = (a: CropBox | null | undefined, b: CropBox | null) =>
  a === b || (a != null && b !== null && a.x === b.x && a.y === b.y && a.w === b.w && a.h === b.h);

export class Cropper {
  private box: CropBox | null = null;
  private before: CropBox | null | undefined = null; // the box searched with when a drag began (undefined: none yet)
  private start: { x: number; y: number } | null = null;
  private settle: ReturnType<typeof setTimeout> | null = null;
  private readonly rect: HTMLDivElement;

  constructor(
    private readonly surface: HTMLElement,
    private readonly onChange: (box: CropBox | null) => void,
  ) {
    this.rect = document.createElement("div");
    this.rect.className = "crop-rect";
    this.rect.hidden = true;
    surface.append(this.rect);
    surface.addEventListener("pointerdown", this.down);
    surface.addEventListener("pointermove", this.move);
    surface.addEventListener("pointerup", this.up);
    surface.addEventListener("pointercancel", this.cancel);
    surface.addEventListener("keydown", this.key);
  }

  get value(): CropBox | null {
    return this.box;
  }

  set(box: CropBox | null, notify = false): void {
    if (this.settle !== null) clearTimeout(this.settle);
    this.settle = null;
    this.box = box;
    this.render();
    if (notify) this.onChange(box);
  }

  private point(e: PointerEvent): { x: number; y: number } {
    const r = this.surface.getBoundingClientRect();
    return { x: clamp((e.clientX - r.left) / r.width, 0, 1), y: clamp((e.clientY - r.top) / r.height, 0, 1) };
  }

  private readonly down = (e: PointerEvent) => {
    if (e.button !== 0) return;
    e.preventDefault();
    this.surface.setPointerCapture(e.pointerId);
    // focusVisible: no focus ring for a pointer (Chromium, Firefox); the keyboard still gets one
    this.surface.focus({ preventScroll: true, focusVisible: false } as FocusOptions);
    const keyStepsPending = this.settle !== null; // arrow-key steps not searched yet: the drag's end searches
    if (this.settle !== null) clearTimeout(this.settle);
    this.settle = null;
    this.before = keyStepsPending ? undefined : this.box;
    this.start = this.point(e);
  };

  private readonly move = (e: PointerEvent) => {
    if (!this.start) return;
    const p = this.point(e);
    this.box = {
      x: Math.min(p.x, this.start.x),
      y: Math.min(p.y, this.start.y),
      w: Math.abs(p.x - this.start.x),
      h: Math.abs(p.y - this.start.y),
    };
    this.render();
  };

  private readonly up = (e: PointerEvent) => {
    if (!this.start) return;
    this.move(e);
    this.start = null;
    if (this.box && (this.box.w < MIN_SIZE || this.box.h < MIN_SIZE)) this.box = null;
    this.render();
    if (!sameBox(this.before, this.box)) this.onChange(this.box); // a plain click on an uncropped photo: nothing
  };

  private readonly cancel = () => {
    this.start = null;
  };

  private readonly key = (e: KeyboardEvent) => {
    if (e.key === "Escape" && this.box) {
      e.preventDefault();
      this.set(null, true);
      return;
    }
    const dx = e.key === "ArrowLeft" ? -1 : e.key === "ArrowRight" ? 1 : 0;
    const dy = e.key === "ArrowUp" ? -1 : e.key === "ArrowDown" ? 1 : 0;
    if (!dx && !dy) return;
    e.preventDefault();
    const step = 0.03;
    const b = this.box ?? { x: 0.2, y: 0.2, w: 0.6, h: 0.6 };
    if (!this.box) {
      this.set(b, true);
      return;
    }
    const next = e.shiftKey
      ? { ...b, w: clamp(b.w + dx * step, MIN_SIZE, 1 - b.x), h: clamp(b.h + dy * step, MIN_SIZE, 1 - b.y) }
      : { ...b, x: clamp(b.x + dx * step, 0, 1 - b.w), y: clamp(b.y + dy * step, 0, 1 - b.h) };
    if (sameBox(next, b)) return; // at the edge already
    this.set(next);
    this.settle = setTimeout(() => {
      this.settle = null;
      this.onChange(this.box);
    }, KEY_SETTLE_MS);
  };

  private render(): void {
    const b = this.box;
    this.rect.hidden = !b;
    this.surface.classList.toggle("has-crop", Boolean(b));
    if (!b) return;
    this.rect.style.left = `${b.x * 100}%`;
    this.rect.style.top = `${b.y * 100}%`;
    this.rect.style.width = `${b.w * 100}%`;
    this.rect.style.height = `${b.h * 100}%`;
  }
}

/** The cropped region of a decoded image as a JPEG blob, its longer side at most `maxSide` pixels (a
 * camera's full resolution would exceed phones' canvas limits and the upload limit, for no gain). */
export async function cropImage(img: HTMLImageElement, box: CropBox, maxSide: number): Promise<Blob> {
  const sx = Math.round(box.x * img.naturalWidth);
  const sy = Math.round(box.y * img.naturalHeight);
  const sw = Math.max(1, Math.round(box.w * img.naturalWidth));
  const sh = Math.max(1, Math.round(box.h * img.naturalHeight));
  const scale = Math.min(1, maxSide / Math.max(sw, sh));
  return drawToJpeg(img, sx, sy, sw, sh, Math.max(1, Math.round(sw * scale)), Math.max(1, Math.round(sh * scale)));
}

/** The whole image scaled so that its longer side is at most `maxSide` pixels. */
export async function downscaleImage(img: HTMLImageElement, maxSide: number): Promise<Blob> {
  const scale = Math.min(1, maxSide / Math.max(img.naturalWidth, img.naturalHeight));
  const w = Math.max(1, Math.round(img.naturalWidth * scale));
  const h = Math.max(1, Math.round(img.naturalHeight * scale));
  return drawToJpeg(img, 0, 0, img.naturalWidth, img.naturalHeight, w, h);
}

function drawToJpeg(
  img: HTMLImageElement,
  sx: number,
  sy: number,
  sw: number,
  sh: number,
  w: number,
  h: number,
): Promise<Blob> {
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  if (!ctx) return Promise.reject(new Error("This browser cannot crop images."));
  ctx.fillStyle = "#fff"; // transparent PNGs: flatten on white like the catalog photos
  ctx.fillRect(0, 0, w, h);
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(img, sx, sy, sw, sh, 0, 0, w, h);
  return new Promise((resolve, reject) =>
    canvas.toBlob((b) => (b ? resolve(b) : reject(new Error("Could not encode the cropped image."))), "image/jpeg", 0.92),
  );
}
