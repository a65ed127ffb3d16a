"""History pages with a bounded size: large outputs are linked, not inlined; the page stops at a budget.

A list item whose ``output`` was left out (its JSON is over ``list_inline_output_bytes``) carries
``output: null``, ``output_size_bytes`` and ``output_url`` (the record's own route, which returns it).
Items are added until the page reaches ``list_max_response_bytes``; then ``has_more`` is true and
``count`` says how many came back (the next page starts at ``offset + count``). Pure functions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel


def page_items(
    records: Sequence[BaseModel], omitted_outputs: Mapping[str, int], byte_budget: int
) -> tuple[list[dict[str, Any]], bool]:
    """The items as JSON-ready dicts, and whether the budget cut the page short (at least one item)."""
    items: list[dict[str, Any]] = []
    used = 0
    for record in records:
        item = record.model_dump(mode="json")
        size = omitted_outputs.get(item["execution_id"])
        if size is not None:
            item["output"] = None
            item["output_size_bytes"] = size
            item["output_url"] = f"/executions/{item['execution_id']}"
        cost = len(json.dumps(item, separators=(",", ":")))
        if items and used + cost > byte_budget:
            return items, True
        items.append(item)
        used += cost
    return items, False
