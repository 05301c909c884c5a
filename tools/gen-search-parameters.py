#!/usr/bin/env python3
"""Generate crates/ward-fhir/definitions/search-parameters.json.

Usage: gen-search-parameters.py PACKAGE_DIR [OUTPUT]

PACKAGE_DIR is the unpacked `hl7.fhir.r4.examples` 4.0.1 npm package (the
folder holding the SearchParameter-*.json files). The output maps each
resource type (and `Resource` for the parameters every type shares) to its
search parameters, with the FHIRPath expression narrowed to that type.

Only the core parameters are kept: the package also carries parameters that
are marked `experimental` (examples and extension-based parameters), and those
are skipped. `_text`, `_content`, `_query` and `_filter` have no expression
and are handled (or rejected) by the server, so they are skipped too.
"""

import json
import pathlib
import sys

SKIPPED_CODES = {"_text", "_content", "_query", "_filter"}

# The R4 definition of DocumentReference-relationship names its components
# the wrong way round (the `relatesto` reference parameter is attached to
# `code`, the `relation` token to `target`). R4B fixed this by swapping the
# definitions, and so does this generator.
SWAPPED_COMPONENTS = {"DocumentReference-relationship"}


def split_union(expression):
    """Split an expression on the `|` operators at the top level."""
    branches = []
    depth = 0
    quoted = False
    current = []
    for ch in expression:
        if quoted:
            current.append(ch)
            if ch == "'":
                quoted = False
            continue
        if ch == "'":
            quoted = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            branches.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    branches.append("".join(current).strip())
    return [b for b in branches if b]


def branch_type(branch):
    """Return the resource type a union branch starts from."""
    text = branch.lstrip("(").strip()
    end = 0
    while end < len(text) and (text[end].isalnum() or text[end] == "_"):
        end += 1
    return text[:end]


def expression_for(expression, base, multi_base):
    """Narrow a multi-base expression to the branches that start at `base`."""
    if expression is None or not multi_base:
        return expression
    branches = [b for b in split_union(expression) if branch_type(b) == base]
    if not branches:
        return None
    return " | ".join(branches)


def load_package(package_dir):
    params = []
    resource_types = []
    for path in sorted(package_dir.glob("SearchParameter-*.json")):
        params.append(json.loads(path.read_text(encoding="utf-8")))
    for path in sorted(package_dir.glob("StructureDefinition-*.json")):
        sd = json.loads(path.read_text(encoding="utf-8"))
        if (
            sd.get("kind") == "resource"
            and sd.get("derivation") == "specialization"
            and not sd.get("abstract")
        ):
            resource_types.append(sd["type"])
    return params, sorted(set(resource_types))


def build_components(param, by_url):
    components = []
    for component in param.get("component", []):
        definition = by_url.get(component["definition"])
        if definition is None:
            raise SystemExit(
                f"{param['id']}: component definition {component['definition']} not found"
            )
        components.append(
            {
                "code": definition["code"],
                "type": definition["type"],
                "expression": component["expression"],
            }
        )
    if param["id"] in SWAPPED_COMPONENTS and len(components) == 2:
        first, second = components
        components = [
            {"code": second["code"], "type": second["type"], "expression": first["expression"]},
            {"code": first["code"], "type": first["type"], "expression": second["expression"]},
        ]
    return components


def build(package_dir):
    params, resource_types = load_package(package_dir)
    core = [p for p in params if not p.get("experimental") and p.get("base")]
    by_url = {p["url"]: p for p in params}
    by_type = {}
    for param in core:
        if param["code"] in SKIPPED_CODES:
            continue
        bases = param["base"]
        for base in bases:
            expression = expression_for(param.get("expression"), base, len(bases) > 1)
            if param.get("expression") is not None and expression is None:
                raise SystemExit(f"{param['id']}: no expression branch for {base}")
            entry = {"code": param["code"], "type": param["type"]}
            if expression is not None:
                entry["expression"] = expression
            if param.get("target"):
                entry["target"] = sorted(param["target"])
            components = build_components(param, by_url)
            if components:
                entry["component"] = components
            by_type.setdefault(base, {})
            if param["code"] in by_type[base]:
                raise SystemExit(f"duplicate parameter {base}.{param['code']}")
            by_type[base][param["code"]] = entry
    parameters = {
        base: [codes[code] for code in sorted(codes)] for base, codes in sorted(by_type.items())
    }
    return {"resourceTypes": resource_types, "parameters": parameters}


def main():
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    package_dir = pathlib.Path(sys.argv[1])
    root = pathlib.Path(__file__).resolve().parent.parent
    default = root / "crates" / "ward-fhir" / "definitions" / "search-parameters.json"
    output = pathlib.Path(sys.argv[2]) if len(sys.argv) == 3 else default
    data = build(package_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    output.write_text(text + "\n", encoding="utf-8")
    count = sum(len(v) for v in data["parameters"].values())
    print(f"wrote {count} search parameters for {len(data['parameters'])} types to {output}")


if __name__ == "__main__":
    main()
