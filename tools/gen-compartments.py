#!/usr/bin/env python3
"""Writes crates/ward-fhir/definitions/patient-compartment.json from the
official R4 CompartmentDefinition for the Patient compartment.

Usage: tools/gen-compartments.py PACKAGE_DIR

PACKAGE_DIR is the unpacked `hl7.fhir.r4.examples` 4.0.1 npm package
(`npm pack hl7.fhir.r4.examples@4.0.1`, then `tar xzf` it); the file read is
`CompartmentDefinition-patient.json`. The output maps each resource type in
the compartment to the search parameters that link it to a patient; types
outside the compartment are left out.
"""

import json
import pathlib
import sys


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    package = pathlib.Path(sys.argv[1])
    definition = json.loads((package / "CompartmentDefinition-patient.json").read_text())
    params = {
        entry["code"]: sorted(entry["param"])
        for entry in definition["resource"]
        if entry.get("param")
    }
    out = pathlib.Path(__file__).resolve().parent.parent / "crates/ward-fhir/definitions/patient-compartment.json"
    out.write_text(json.dumps({"url": definition["url"], "params": dict(sorted(params.items()))}, separators=(",", ":")) + "\n")
    print(f"wrote {out} ({len(params)} resource types)")


if __name__ == "__main__":
    main()
