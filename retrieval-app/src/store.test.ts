import { describe, expect, it } from "vitest";

import type { ModelsResponse } from "./api";
import { Store } from "./store";

const models = {
  default: "b", synthetic_catalog: false,
  models: [{ name: "a" }, { name: "b" }],
} as unknown as ModelsResponse;

describe("Store", () => {
  it("falls back to the default model when the URL names one that is not served", () => {
    const store = new Store("?model=gone");
    store.useModels(models);
    expect(store.view.model).toBe("b");
    const kept = new Store("?model=a");
    kept.useModels(models);
    expect(kept.view.model).toBe("a");
  });

  it("keeps only the filters the catalog has, also after navigating", () => {
    const store = new Store("?gender=Men&utm_source=mail");
    store.useFacets({ gender: [], baseColour: [] });
    expect(store.view.filters).toEqual({ gender: ["Men"] });
    store.restore("?baseColour=Red&fbclid=1");
    expect(store.view.filters).toEqual({ baseColour: ["Red"] });
  });

  it("changes the view only through its methods, and the search options follow", () => {
    const store = new Store("");
    store.useModels(models);
    store.setTopK(30);
    store.setRerank("none");
    store.setFilter("gender", "Women");
    store.setLike({ id: 7, productDisplayName: "Red dress" } as never);
    expect(store.searchOptions()).toEqual({ model: "b", topK: 30, filters: { gender: ["Women"] }, rerank: "none" });
    expect(store.search).toBe("?model=b&k=30&gender=Women&order=visual&like=7");
    expect(store.known.get(7)?.productDisplayName).toBe("Red dress");
    store.setLike(null);
    store.clearFilters();
    expect(store.search).toBe("?model=b&k=30&order=visual");
  });

  it("hands back the photo it replaces, so its object URL can be revoked", () => {
    const store = new Store("");
    const first = { blob: new Blob(["a"]), name: "a.jpg", url: "blob:a", decoded: true };
    expect(store.setImage(first)).toBeNull();
    expect(store.setImage({ ...first, url: "blob:b" })).toBe(first);
  });
});
