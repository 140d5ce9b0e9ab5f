"""JSON: the document (its record and the device it was placed on, with the derived tables beside them
for readers without graphmfu); ``Report.load`` re-derives from the record."""
import json as _json

SUFFIXES = (".json",)


def render(doc, **_) -> str:
    return _json.dumps(doc.to_dict(), indent=1, default=str)
