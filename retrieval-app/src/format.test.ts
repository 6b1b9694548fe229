import { describe, expect, it } from "vitest";

import type { ModelInfo, SearchResponse, SearchResult } from "./api";
import { ApiError, resolveImageUrl } from "./api";
import {
  errorMessage,
  evaluationText,
  facetChoices,
  formatCount,
  isTransient,
  modelInfoText,
  modelLabel,
  optionsSummary,
  resultsStatus,
} from "./format";
import { parseState } from "./state";

const model: ModelInfo = {
  name: "tiny", description: "a test model", backbone: "lite0", kind: "trained", dims: 32, index_type: "Flat",
  index_size: 1200, input_size: 64, default: true, evaluation: { mAP: 0.77181, PrecisionHits: 0.813, note: "x" as unknown as number },
};

function response(n: number, typeFirst: string | null = null): SearchResponse {
  const results = Array.from({ length: n }, (_, i) => ({ id: i, rank: i + 1, score: 0.9 }) as SearchResult);
  return { model: "tiny", took_ms: 12.6, rerank: typeFirst ? "category" : "none", type_first: typeFirst, results };
}

describe("text shown to the user", () => {
  it("labels models with their evaluation", () => {
    expect(modelLabel(model)).toBe("tiny · mAP 0.772 (default)");
    expect(evaluationText(model)).toBe("mAP 0.772, PrecisionHits 0.813");
    expect(evaluationText({ ...model, evaluation: null })).toBe("not evaluated yet");
  });

  it("summarizes the folded options", () => {
    expect(optionsSummary(parseState("?model=tiny&gender=Men&baseColour=Red&order=visual"))).toBe(
      "tiny · 15 results · 2 filters · by look only",
    );
    expect(optionsSummary(parseState("?k=5&usage=Casual"))).toBe("5 results · 1 filter");
    // the gender alone, on a model that cannot order by gender: the search is by look only
    expect(optionsSummary(parseState("?order=gender"), ["none", "category"])).toBe("15 results · by look only");
    expect(optionsSummary(parseState("?order=gender"), ["none", "category", "gender", "category+gender"])).toBe(
      "15 results",
    );
  });

  it("says how many results, how fast and which type came first", () => {
    expect(resultsStatus(response(15, "Shirts"), parseState("?k=15"))).toBe(
      "15 results in 13 ms with tiny · Shirts first",
    );
    expect(resultsStatus(response(1), parseState("?k=15&gender=Men"))).toBe(
      "1 result (every product that passes the filters) in 13 ms with tiny",
    );
    expect(resultsStatus(response(0), parseState(""))).toBe("");
    const both = { ...response(15, "Shirts"), rerank: "category+gender" as const, gender_first: "Men" };
    expect(resultsStatus(both, parseState(""))).toBe("15 results in 13 ms with tiny · Shirts first · Men first");
  });

  it("offers Any, the catalog's values and a URL value the catalog lacks", () => {
    const values = [{ value: "Men", count: 22147 }, { value: "", count: 3 }, { value: "Women", count: 18631 }];
    expect(facetChoices(values, "Boys").map((c) => c.value)).toEqual(["", "Men", "Women", "Boys"]);
    expect(facetChoices(values, "Men")[1].label).toBe(`Men (${formatCount(22147)})`);
  });

  it("shows the API's own message, else a plain one", () => {
    expect(errorMessage(new ApiError(400, "unknown value 'Pink' for filter 'gender'"))).toBe(
      "unknown value 'Pink' for filter 'gender'",
    );
    expect(errorMessage("boom")).toBe("Something went wrong. Please try again.");
    expect(errorMessage(new ApiError(501, "cannot load the text encoder: pip install ..."))).toBe(
      "Search by words is not available on this service.", // not the operator's message
    );
  });

  it("offers to try again only where that may help", () => {
    for (const status of [0, 429, 502, 503, 504]) expect(isTransient(new ApiError(status, "x"))).toBe(true);
    for (const status of [400, 413, 415, 422, 500, 501]) expect(isTransient(new ApiError(status, "x"))).toBe(false);
    expect(isTransient(new Error("Could not encode the cropped image."))).toBe(false);
  });

  it("describes a model whose backbone is unknown", () => {
    expect(modelInfoText({ ...model, backbone: null })).toBe(
      `a test model. 32 dims, ${formatCount(1200)} products. Evaluation: mAP 0.772, PrecisionHits 0.813.`,
    );
  });
});

describe("image URLs of the API", () => {
  it("keep their version under the app's API base", () => {
    expect(resolveImageUrl("/api/images/15970?v=0", "/api")).toBe("/api/images/15970?v=0");
    expect(resolveImageUrl("/api/images/15970?v=ab12", "https://shop.example/search-api")).toBe(
      "https://shop.example/search-api/images/15970?v=ab12",
    );
    expect(resolveImageUrl("https://cdn.example/x.jpg", "/api")).toBe("https://cdn.example/x.jpg");
  });
});
