import { describe, expect, it } from "vitest";

import {
  cleanQuery,
  DEFAULT_TOP_K,
  filterCount,
  hasFilters,
  knownFilters,
  MAX_QUERY_CHARS,
  parseState,
  stateToSearch,
  genderFirstIn,
  rerankOf,
  supportedRerank,
  topKOptions,
  typeFirstIn,
  withFilter,
} from "./state";

describe("URL state", () => {
  it("round-trips a shared search", () => {
    const search = "?model=tiny&k=30&gender=Men&articleType=Tshirts&articleType=Shirts&order=visual&like=1163";
    const state = parseState(search);
    expect(state).toEqual({
      model: "tiny",
      topK: 30,
      filters: { gender: ["Men"], articleType: ["Tshirts", "Shirts"] },
      likeId: 1163,
      rerank: "none",
      q: "",
    });
    expect(parseState(stateToSearch(state))).toEqual(state);
  });

  it("falls back to the defaults for missing or bad values", () => {
    const state = parseState("?k=0&like=-3&gender=");
    expect(state).toEqual({
      model: null,
      topK: DEFAULT_TOP_K,
      filters: {},
      likeId: null,
      rerank: "category+gender",
      q: "",
    });
    expect(parseState("?order=sideways").rerank).toBe("category+gender");
    expect(parseState("?k=5000").topK).toBe(100);
    expect(stateToSearch(parseState(""))).toBe("");
  });

  it("treats every other parameter as a filter until the facets name the fields", () => {
    const state = parseState("?season=Summer&utm_source=mail&model=tiny");
    expect(state.filters).toEqual({ season: ["Summer"], utm_source: ["mail"] });
    expect(knownFilters(state.filters, ["gender", "season"])).toEqual({ season: ["Summer"] });
  });
});

describe("filters", () => {
  it("sets, replaces and drops a field's value", () => {
    let filters = withFilter({}, "gender", "Men");
    expect(filters).toEqual({ gender: ["Men"] });
    filters = withFilter({ ...filters, baseColour: ["Red", "Blue"] }, "gender", "Women");
    expect(filters).toEqual({ gender: ["Women"], baseColour: ["Red", "Blue"] });
    expect(withFilter(filters, "gender", "")).toEqual({ baseColour: ["Red", "Blue"] });
    expect(filterCount(filters)).toBe(3);
    expect(hasFilters({ gender: [] })).toBe(false);
    expect(hasFilters(filters)).toBe(true);
  });

  it("offers the fixed K choices plus the URL's own", () => {
    expect(topKOptions(15)).toEqual([5, 10, 15, 30, 50]);
    expect(topKOptions(7)).toEqual([5, 7, 10, 15, 30, 50]);
  });
});

describe("words in the URL", () => {
  it("keeps q, collapses whitespace, caps its length and leaves it out of the filters", () => {
    const state = parseState("?q=navy%20%20striped+polo&gender=Men");
    expect(state.q).toBe("navy striped polo");
    expect(state.filters).toEqual({ gender: ["Men"] });
    expect(stateToSearch(state)).toBe("?gender=Men&q=navy+striped+polo");
    expect(parseState(`?q=${"x".repeat(500)}`).q).toHaveLength(MAX_QUERY_CHARS);
    expect(stateToSearch(parseState("?q=%20%20"))).toBe("");
    expect(cleanQuery("  red \n dress ")).toBe("red dress");
    const cut = cleanQuery("x".repeat(MAX_QUERY_CHARS - 1) + "\u{1F457}\u{1F457}"); // emoji: 2 UTF-16 units each
    expect(Array.from(cut)).toHaveLength(MAX_QUERY_CHARS);
    expect(cut.endsWith("\u{1F457}")).toBe(true); // whole, not a lone surrogate
  });
});

describe("result order", () => {
  it("keeps each combination of the two checkboxes in the URL, the default (both) left out", () => {
    for (const [type, gender, order] of [
      [true, true, ""],
      [true, false, "?order=type"],
      [false, true, "?order=gender"],
      [false, false, "?order=visual"],
    ] as const) {
      const rerank = rerankOf(type, gender);
      expect([typeFirstIn(rerank), genderFirstIn(rerank)]).toEqual([type, gender]);
      const state = { ...parseState(""), rerank };
      expect(stateToSearch(state)).toBe(order);
      expect(parseState(order).rerank).toBe(rerank);
    }
  });

  it("leaves the gender out for a model without a gender predictor", () => {
    const all = ["none", "category", "gender", "category+gender"] as const;
    expect(supportedRerank("category+gender", all)).toBe("category+gender");
    expect(supportedRerank("category+gender", ["none", "category"])).toBe("category");
    expect(supportedRerank("gender", ["none", "category"])).toBe("none");
    expect(supportedRerank("gender", undefined)).toBe("none");
    expect(supportedRerank("category", undefined)).toBe("category");
  });
});
