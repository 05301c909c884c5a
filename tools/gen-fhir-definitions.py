#!/usr/bin/env python3
"""Generate crates/ward-fhir/definitions/structure.json from the FHIR R4 package.

The input is the official `hl7.fhir.r4.examples` 4.0.1 npm package, unpacked:

    npm pack hl7.fhir.r4.examples@4.0.1
    mkdir -p /tmp/fhirpkg && tar -xzf hl7.fhir.r4.examples-4.0.1.tgz -C /tmp/fhirpkg
    python3 tools/gen-fhir-definitions.py /tmp/fhirpkg/package

The output holds only what the validator and the summary filter read:

- `types`: every resource type and complex datatype (non-abstract ones, plus
  the abstract bases Resource, DomainResource, Element and BackboneElement),
  each with its kind and its snapshot elements below the root. An element
  stores `path`, `min`, `max` and `type`, the list of type codes, where
  `Reference(Patient|Group)` carries the target resource names. Optional
  keys are `ref` (contentReference, without `#`), `summary` and `modifier`
  (only when true), and `binding` (the value set URL of a required binding,
  without its version).
- `primitives`: each primitive type with the regex from its `value` element.
- `valueSets`: each required value set that the package's CodeSystems can
  expand, as {system: [codes]}. `unexpanded` lists the required value sets
  that cannot be expanded here, so the validator leaves those codes unchecked.

The output is sorted and byte-for-byte deterministic for a given package.
"""

import json
import os
import sys

REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
ABSTRACT_BASES = {"Resource", "DomainResource", "Element", "BackboneElement"}
OUTPUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "crates",
    "ward-fhir",
    "definitions",
    "structure.json",
)


def load_all(package_dir, prefix):
    """Load every `<prefix>-*.json` file in the package directory."""
    items = []
    for name in sorted(os.listdir(package_dir)):
        if name.startswith(prefix + "-") and name.endswith(".json"):
            with open(os.path.join(package_dir, name), encoding="utf-8") as f:
                items.append(json.load(f))
    return items


def strip_version(url):
    return url.split("|", 1)[0]


def type_code(element, type_entry):
    """Return the FHIR type code of one `type` entry of an element.

    Elements such as Element.id and Extension.url carry a FHIRPath system
    type (`http://hl7.org/fhirpath/System.String`) and name their FHIR type in
    the structuredefinition-fhir-type extension.
    """
    code = type_entry["code"]
    if code.startswith("http://hl7.org/fhirpath/"):
        for ext in type_entry.get("extension", []):
            if ext.get("url") == FHIR_TYPE_EXT:
                code = ext["valueUrl"]
                break
    # The R4 snapshots declare Resource.id as `string`, but the R4 resource
    # page defines the logical id as the `id` datatype (1-64 characters of
    # [A-Za-z0-9-.]), which is what servers enforce.
    if element["path"].endswith(".id") and element.get("base", {}).get("path") == "Resource.id":
        code = "id"
    return code


def type_string(element, type_entry):
    code = type_code(element, type_entry)
    targets = [
        p[len(SD_PREFIX):] for p in type_entry.get("targetProfile", []) if p.startswith(SD_PREFIX)
    ]
    if targets and code in ("Reference", "canonical"):
        return "%s(%s)" % (code, "|".join(targets))
    return code


def compact_element(element):
    out = {"path": element["path"], "min": element.get("min", 0), "max": element.get("max", "*")}
    types = [type_string(element, t) for t in element.get("type", [])]
    if types:
        out["type"] = types
    if "contentReference" in element:
        out["ref"] = element["contentReference"].lstrip("#")
    if element.get("isSummary"):
        out["summary"] = True
    if element.get("isModifier"):
        out["modifier"] = True
    binding = element.get("binding")
    if binding and binding.get("strength") == "required" and "valueSet" in binding:
        out["binding"] = strip_version(binding["valueSet"])
    return out


def primitive_regex(sd):
    for element in sd["snapshot"]["element"]:
        if element["path"] == sd["type"] + ".value":
            for type_entry in element.get("type", []):
                for ext in type_entry.get("extension", []):
                    if ext.get("url") == REGEX_EXT:
                        return ext["valueString"]
    return None


class Terminology:
    """Expands value sets from the CodeSystems and ValueSets of the package."""

    def __init__(self, code_systems, value_sets):
        self.code_systems = {cs["url"]: cs for cs in code_systems if "url" in cs}
        self.value_sets = {vs["url"]: vs for vs in value_sets if "url" in vs}

    def all_codes(self, system):
        """Return every code of a complete CodeSystem, or None."""
        cs = self.code_systems.get(system)
        if cs is None or cs.get("content") != "complete":
            return None
        codes = []
        stack = list(cs.get("concept", []))
        while stack:
            concept = stack.pop()
            codes.append(concept["code"])
            stack.extend(concept.get("concept", []))
        return set(codes)

    def descendants(self, system, root, include_root):
        """Return the codes below `root` in a complete CodeSystem's hierarchy, or None.

        Only the nesting of `concept` is honoured. A CodeSystem that states its
        hierarchy through `subsumedBy` properties instead yields None.
        """
        cs = self.code_systems.get(system)
        if cs is None or cs.get("content") != "complete":
            return None
        if any(p.get("code") in ("parent", "subsumedBy") for p in cs.get("property", [])):
            return None

        def find(concepts):
            for concept in concepts:
                if concept["code"] == root:
                    return concept
                found = find(concept.get("concept", []))
                if found is not None:
                    return found
            return None

        start = find(cs.get("concept", []))
        if start is None:
            return None
        codes = {root} if include_root else set()
        stack = list(start.get("concept", []))
        while stack:
            concept = stack.pop()
            codes.add(concept["code"])
            stack.extend(concept.get("concept", []))
        return codes

    def include_codes(self, include):
        """Return {system: codes} for one compose.include, or None."""
        result = {}
        for vs_url in include.get("valueSet", []):
            nested = self.expand(strip_version(vs_url))
            if nested is None:
                return None
            for system, codes in nested.items():
                result.setdefault(system, set()).update(codes)
        system = include.get("system")
        if system is None:
            return result if include.get("valueSet") else None
        if include.get("valueSet"):
            # An include that names both a system and value sets means their
            # intersection. The R4 core required bindings never do this.
            return None
        if "concept" in include:
            codes = {c["code"] for c in include["concept"]}
        elif "filter" in include:
            codes = None
            for flt in include["filter"]:
                if flt.get("property") != "concept" or flt.get("op") not in ("is-a", "descendent-of"):
                    return None
                found = self.descendants(system, flt["value"], flt["op"] == "is-a")
                if found is None:
                    return None
                codes = found if codes is None else codes & found
        else:
            codes = self.all_codes(system)
        if codes is None:
            return None
        result.setdefault(system, set()).update(codes)
        return result

    def expand(self, url, seen=()):
        """Return {system: codes} for a value set, or None when it cannot be expanded.

        Expansion fails for value sets whose codes come from outside the package
        (UCUM, BCP-47 languages, MIME types, SNOMED CT and other external code
        systems), for CodeSystems that are only fragments, and for filters
        other than concept is-a and descendent-of.
        """
        if url in seen:
            return None
        vs = self.value_sets.get(url)
        if vs is None or "compose" not in vs:
            return None
        result = {}
        for include in vs["compose"].get("include", []):
            codes = self.include_codes(include)
            if codes is None:
                return None
            for system, system_codes in codes.items():
                result.setdefault(system, set()).update(system_codes)
        for exclude in vs["compose"].get("exclude", []):
            if "concept" not in exclude or "system" not in exclude or "filter" in exclude:
                return None
            removed = {c["code"] for c in exclude["concept"]}
            result[exclude["system"]] = result.get(exclude["system"], set()) - removed
        return result


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen-fhir-definitions.py PACKAGE_DIR (the unpacked hl7.fhir.r4.examples 4.0.1)")
    package_dir = sys.argv[1]

    types = {}
    primitives = {}
    for sd in load_all(package_dir, "StructureDefinition"):
        if sd.get("derivation") == "constraint" or sd.get("kind") == "logical":
            continue
        name = sd["type"]
        if sd["kind"] == "primitive-type":
            primitives[name] = primitive_regex(sd)
            continue
        if sd["kind"] not in ("resource", "complex-type"):
            continue
        if sd.get("abstract") and name not in ABSTRACT_BASES:
            continue
        elements = [compact_element(e) for e in sd["snapshot"]["element"] if e["path"] != name]
        types[name] = {"kind": sd["kind"], "elements": elements}
        if sd.get("abstract"):
            types[name]["abstract"] = True

    bindings = sorted(
        {e["binding"] for t in types.values() for e in t["elements"] if "binding" in e}
    )
    terminology = Terminology(
        load_all(package_dir, "CodeSystem"), load_all(package_dir, "ValueSet")
    )
    value_sets = {}
    unexpanded = []
    for url in bindings:
        expansion = terminology.expand(url)
        if expansion is None or not any(expansion.values()):
            unexpanded.append(url)
            continue
        value_sets[url] = {system: sorted(codes) for system, codes in sorted(expansion.items())}

    output = {
        "fhirVersion": "4.0.1",
        "types": types,
        "primitives": primitives,
        "valueSets": value_sets,
        "unexpanded": unexpanded,
    }
    os.makedirs(os.path.dirname(OUTPUT), exist_ok=True)
    with open(OUTPUT, "w", encoding="utf-8") as f:
        json.dump(output, f, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")
    print(
        "wrote %s: %d types, %d primitives, %d value sets expanded, %d left unexpanded"
        % (os.path.normpath(OUTPUT), len(types), len(primitives), len(value_sets), len(unexpanded)),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
