//! The vitals form: parsing with unit checks and plausible ranges, and the
//! vital-signs Observations (LOINC codes, UCUM units) a valid form becomes.
//!
//! The ranges reject typing mistakes (a temperature of 375, a weight in
//! grams), not unusual patients: they are wide on purpose. They are this
//! project's own choice, not taken from a clinical guideline.

use serde_json::{Value, json};

const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";

/// One avoirdupois pound in kilograms.
const POUND_IN_KG: f64 = 0.453_592_37;

/// One vital sign the form offers.
struct Kind {
    field: &'static str,
    label: &'static str,
    loinc: &'static str,
    display: &'static str,
    /// The UCUM code of the stored unit.
    ucum: &'static str,
    /// The unit shown to people.
    unit: &'static str,
    min: f64,
    max: f64,
}

const HEART_RATE: Kind = Kind {
    field: "heart_rate",
    label: "Heart rate",
    loinc: "8867-4",
    display: "Heart rate",
    ucum: "/min",
    unit: "/min",
    min: 20.0,
    max: 250.0,
};
const RESPIRATORY_RATE: Kind = Kind {
    field: "respiratory_rate",
    label: "Respiratory rate",
    loinc: "9279-1",
    display: "Respiratory rate",
    ucum: "/min",
    unit: "/min",
    min: 4.0,
    max: 60.0,
};
const SPO2: Kind = Kind {
    field: "spo2",
    label: "Oxygen saturation",
    loinc: "59408-5",
    display: "Oxygen saturation in Arterial blood by Pulse oximetry",
    ucum: "%",
    unit: "%",
    min: 50.0,
    max: 100.0,
};
const HEIGHT: Kind = Kind {
    field: "height",
    label: "Body height",
    loinc: "8302-2",
    display: "Body height",
    ucum: "cm",
    unit: "cm",
    min: 20.0,
    max: 250.0,
};
const TEMPERATURE: Kind = Kind {
    field: "temperature",
    label: "Body temperature",
    loinc: "8310-5",
    display: "Body temperature",
    ucum: "Cel",
    unit: "°C",
    min: 30.0,
    max: 45.0,
};
const WEIGHT: Kind = Kind {
    field: "weight",
    label: "Body weight",
    loinc: "29463-7",
    display: "Body weight",
    ucum: "kg",
    unit: "kg",
    min: 0.3,
    max: 500.0,
};
const SYSTOLIC: Kind = Kind {
    field: "systolic",
    label: "Systolic blood pressure",
    loinc: "8480-6",
    display: "Systolic blood pressure",
    ucum: "mm[Hg]",
    unit: "mmHg",
    min: 50.0,
    max: 260.0,
};
const DIASTOLIC: Kind = Kind {
    field: "diastolic",
    label: "Diastolic blood pressure",
    loinc: "8462-4",
    display: "Diastolic blood pressure",
    ucum: "mm[Hg]",
    unit: "mmHg",
    min: 20.0,
    max: 160.0,
};

/// A form value that failed its check.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// The form field.
    pub field: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// The raw form fields, as typed.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct VitalsForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// Systolic pressure, mmHg.
    #[serde(default)]
    pub systolic: String,
    /// Diastolic pressure, mmHg.
    #[serde(default)]
    pub diastolic: String,
    /// Beats per minute.
    #[serde(default)]
    pub heart_rate: String,
    /// Breaths per minute.
    #[serde(default)]
    pub respiratory_rate: String,
    /// Body temperature in `temperature_unit`.
    #[serde(default)]
    pub temperature: String,
    /// `C` or `F`.
    #[serde(default)]
    pub temperature_unit: String,
    /// Oxygen saturation, percent.
    #[serde(default)]
    pub spo2: String,
    /// Body weight in `weight_unit`.
    #[serde(default)]
    pub weight: String,
    /// `kg` or `lb`.
    #[serde(default)]
    pub weight_unit: String,
    /// Body height, cm.
    #[serde(default)]
    pub height: String,
}

/// A checked vital sign in its stored unit.
#[derive(Debug, Clone, PartialEq)]
struct Measured {
    kind: &'static Kind,
    value: f64,
}

impl std::fmt::Debug for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.field)
    }
}

impl PartialEq for Kind {
    fn eq(&self, other: &Self) -> bool {
        self.field == other.field
    }
}

/// Checked vitals, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Vitals {
    /// Systolic and diastolic pressure, mmHg.
    blood_pressure: Option<(f64, f64)>,
    single: Vec<Measured>,
}

/// Parses a decimal number typed by a person; a comma is accepted as the
/// decimal separator.
fn parse_number(kind: &Kind, raw: &str) -> Result<Option<f64>, FieldError> {
    let text = raw.trim().replace(',', ".");
    if text.is_empty() {
        return Ok(None);
    }
    let invalid = || FieldError {
        field: kind.field,
        message: format!("{}: '{}' is not a number.", kind.label, raw.trim()),
    };
    if text.len() > 12 {
        return Err(invalid());
    }
    let value: f64 = text.parse().map_err(|_| invalid())?;
    if !value.is_finite() {
        return Err(invalid());
    }
    Ok(Some(value))
}

/// Checks `value`, already in the stored unit, against the plausible range.
/// `entered` and `entered_unit` are what the user typed, for the message.
fn check(
    kind: &'static Kind,
    value: f64,
    entered: f64,
    entered_unit: &str,
) -> Result<Measured, FieldError> {
    if value < kind.min || value > kind.max {
        // The range is stated in the unit the user typed.
        let (min, max, unit) = match entered_unit {
            "°F" => (
                kind.min * 9.0 / 5.0 + 32.0,
                kind.max * 9.0 / 5.0 + 32.0,
                "°F",
            ),
            "lb" => (kind.min / POUND_IN_KG, kind.max / POUND_IN_KG, "lb"),
            _ => (kind.min, kind.max, kind.unit),
        };
        return Err(FieldError {
            field: kind.field,
            message: format!(
                "{}: {entered} {entered_unit} is outside the plausible range {} to {} {unit}. Check the value and its unit.",
                kind.label,
                round1(min),
                round1(max),
            ),
        });
    }
    Ok(Measured {
        kind,
        value: round1(value),
    })
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

impl VitalsForm {
    /// Checks every field: numbers, units, plausible ranges, a complete
    /// blood pressure and at least one value.
    ///
    /// # Errors
    ///
    /// Every field that failed, in form order.
    pub fn check(&self) -> Result<Vitals, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut single = Vec::new();
        let mut number = |kind: &'static Kind, raw: &str| match parse_number(kind, raw) {
            Ok(value) => value,
            Err(error) => {
                errors.push(error);
                None
            }
        };
        let systolic = number(&SYSTOLIC, &self.systolic);
        let diastolic = number(&DIASTOLIC, &self.diastolic);
        let heart_rate = number(&HEART_RATE, &self.heart_rate);
        let respiratory_rate = number(&RESPIRATORY_RATE, &self.respiratory_rate);
        let temperature = number(&TEMPERATURE, &self.temperature);
        let spo2 = number(&SPO2, &self.spo2);
        let weight = number(&WEIGHT, &self.weight);
        let height = number(&HEIGHT, &self.height);

        let blood_pressure = match (systolic, diastolic) {
            (Some(sys), Some(dia)) => {
                let sys_checked = check(&SYSTOLIC, sys, sys, "mmHg");
                let dia_checked = check(&DIASTOLIC, dia, dia, "mmHg");
                match (sys_checked, dia_checked) {
                    (Ok(_), Ok(_)) if dia >= sys => {
                        errors.push(FieldError {
                            field: DIASTOLIC.field,
                            message: format!(
                                "Diastolic blood pressure ({dia}) must be lower than systolic ({sys}). Check that the two are not swapped."
                            ),
                        });
                        None
                    }
                    (Ok(s), Ok(d)) => Some((s.value, d.value)),
                    (s, d) => {
                        errors.extend(s.err());
                        errors.extend(d.err());
                        None
                    }
                }
            }
            (Some(_), None) => {
                errors.push(FieldError {
                    field: DIASTOLIC.field,
                    message: "Blood pressure needs the diastolic value too.".into(),
                });
                None
            }
            (None, Some(_)) => {
                errors.push(FieldError {
                    field: SYSTOLIC.field,
                    message: "Blood pressure needs the systolic value too.".into(),
                });
                None
            }
            (None, None) => None,
        };
        for (kind, value) in [
            (&HEART_RATE, heart_rate),
            (&RESPIRATORY_RATE, respiratory_rate),
            (&SPO2, spo2),
            (&HEIGHT, height),
        ] {
            if let Some(value) = value {
                match check(kind, value, value, kind.unit) {
                    Ok(measured) => single.push(measured),
                    Err(error) => errors.push(error),
                }
            }
        }
        if let Some(value) = temperature {
            let converted = match self.temperature_unit.as_str() {
                "C" | "" => Some((value, "°C")),
                "F" => Some(((value - 32.0) * 5.0 / 9.0, "°F")),
                other => {
                    errors.push(FieldError {
                        field: TEMPERATURE.field,
                        message: format!(
                            "Temperature unit '{other}' is not supported; choose °C or °F."
                        ),
                    });
                    None
                }
            };
            if let Some((celsius, unit)) = converted {
                match check(&TEMPERATURE, celsius, value, unit) {
                    Ok(measured) => single.push(measured),
                    Err(error) => errors.push(error),
                }
            }
        }
        if let Some(value) = weight {
            let converted = match self.weight_unit.as_str() {
                "kg" | "" => Some((value, "kg")),
                "lb" => Some((value * POUND_IN_KG, "lb")),
                other => {
                    errors.push(FieldError {
                        field: WEIGHT.field,
                        message: format!(
                            "Weight unit '{other}' is not supported; choose kg or lb."
                        ),
                    });
                    None
                }
            };
            if let Some((kg, unit)) = converted {
                match check(&WEIGHT, kg, value, unit) {
                    Ok(measured) => single.push(measured),
                    Err(error) => errors.push(error),
                }
            }
        }
        if errors.is_empty() && blood_pressure.is_none() && single.is_empty() {
            errors.push(FieldError {
                field: SYSTOLIC.field,
                message: "Enter at least one vital sign.".into(),
            });
        }
        if errors.is_empty() {
            Ok(Vitals {
                blood_pressure,
                single,
            })
        } else {
            Err(errors)
        }
    }
}

fn category() -> Value {
    json!([{
        "coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs",
            "display": "Vital Signs",
        }],
    }])
}

fn code(loinc: &str, display: &str) -> Value {
    json!({"coding": [{"system": LOINC, "code": loinc, "display": display}], "text": display})
}

/// Builds a Quantity; a whole number is written without a fraction (`72`,
/// not `72.0`), as it was typed.
fn quantity(kind: &Kind, value: f64) -> Value {
    let number = if value.fract() == 0.0 && value.abs() < 1e9 {
        json!(value as i64)
    } else {
        json!(value)
    };
    json!({"value": number, "unit": kind.unit, "system": UCUM, "code": kind.ucum})
}

impl Vitals {
    /// Builds one vital-signs Observation per measurement (blood pressure
    /// as one panel with two components) for `patient_id`, taken at
    /// `effective` (an RFC 3339 time) and performed by `performer` (a
    /// `fhirUser` reference such as `Practitioner/dr`).
    pub fn observations(
        &self,
        patient_id: &str,
        effective: &str,
        performer: Option<&str>,
    ) -> Vec<Value> {
        let base = |code_value: Value| {
            let mut observation = json!({
                "resourceType": "Observation",
                "status": "final",
                "category": category(),
                "code": code_value,
                "subject": {"reference": format!("Patient/{patient_id}")},
                "effectiveDateTime": effective,
            });
            if let Some(reference) = performer {
                observation["performer"] = json!([{"reference": reference}]);
            }
            observation
        };
        let mut out = Vec::new();
        if let Some((systolic, diastolic)) = self.blood_pressure {
            let mut panel = base(code("85354-9", "Blood pressure panel"));
            panel["component"] = json!([
                {"code": code(SYSTOLIC.loinc, SYSTOLIC.display), "valueQuantity": quantity(&SYSTOLIC, systolic)},
                {"code": code(DIASTOLIC.loinc, DIASTOLIC.display), "valueQuantity": quantity(&DIASTOLIC, diastolic)},
            ]);
            out.push(panel);
        }
        for measured in &self.single {
            let mut observation = base(code(measured.kind.loinc, measured.kind.display));
            observation["valueQuantity"] = quantity(measured.kind, measured.value);
            out.push(observation);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> VitalsForm {
        let mut form = VitalsForm::default();
        for (name, value) in pairs {
            let value = (*value).to_owned();
            match *name {
                "systolic" => form.systolic = value,
                "diastolic" => form.diastolic = value,
                "heart_rate" => form.heart_rate = value,
                "respiratory_rate" => form.respiratory_rate = value,
                "temperature" => form.temperature = value,
                "temperature_unit" => form.temperature_unit = value,
                "spo2" => form.spo2 = value,
                "weight" => form.weight = value,
                "weight_unit" => form.weight_unit = value,
                "height" => form.height = value,
                other => panic!("unknown field {other}"),
            }
        }
        form
    }

    fn fields(errors: &[FieldError]) -> Vec<&'static str> {
        errors.iter().map(|e| e.field).collect()
    }

    #[test]
    fn vitals_valid_form_builds_observations() {
        let vitals = form(&[
            ("systolic", "128"),
            ("diastolic", "82"),
            ("heart_rate", "72"),
            ("temperature", "98.6"),
            ("temperature_unit", "F"),
            ("weight", "70,5"),
        ])
        .check()
        .expect("valid");
        let observations =
            vitals.observations("p1", "2026-01-01T10:00:00Z", Some("Practitioner/dr"));
        assert_eq!(observations.len(), 4);
        let panel = &observations[0];
        assert_eq!(panel["code"]["coding"][0]["code"], "85354-9");
        assert_eq!(panel["component"][0]["valueQuantity"]["value"], json!(128));
        assert_eq!(panel["component"][1]["valueQuantity"]["code"], "mm[Hg]");
        assert_eq!(panel["subject"]["reference"], "Patient/p1");
        assert_eq!(panel["performer"][0]["reference"], "Practitioner/dr");
        let temperature = observations
            .iter()
            .find(|o| o["code"]["coding"][0]["code"] == "8310-5")
            .expect("temperature");
        assert_eq!(temperature["valueQuantity"]["value"], json!(37));
        assert_eq!(temperature["valueQuantity"]["code"], "Cel");
        let weight = observations
            .iter()
            .find(|o| o["code"]["coding"][0]["code"] == "29463-7")
            .expect("weight");
        assert_eq!(weight["valueQuantity"]["value"], json!(70.5));
    }

    #[test]
    fn vitals_out_of_range_rejected() {
        let errors = form(&[("temperature", "375"), ("heart_rate", "7"), ("spo2", "101")])
            .check()
            .expect_err("implausible");
        assert_eq!(fields(&errors), ["heart_rate", "spo2", "temperature"]);
        assert!(errors[2].message.contains("375"), "{}", errors[2].message);
    }

    #[test]
    fn vitals_range_in_the_unit_typed() {
        let errors = form(&[("temperature", "37"), ("temperature_unit", "F")])
            .check()
            .expect_err("implausible");
        assert_eq!(
            errors[0].message,
            "Body temperature: 37 °F is outside the plausible range 86 to 113 °F. Check the value and its unit."
        );
        let errors = form(&[("weight", "2000"), ("weight_unit", "lb")])
            .check()
            .expect_err("implausible");
        assert!(
            errors[0].message.contains("0.7 to 1102.3 lb"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn vitals_pounds_converted_and_checked() {
        let vitals = form(&[("weight", "154"), ("weight_unit", "lb")])
            .check()
            .expect("valid");
        let observations = vitals.observations("p", "2026-01-01T00:00:00Z", None);
        assert_eq!(observations[0]["valueQuantity"]["value"], json!(69.9));
        assert!(observations[0].get("performer").is_none());
        let errors = form(&[("weight", "70"), ("weight_unit", "stone")])
            .check()
            .expect_err("unit");
        assert_eq!(fields(&errors), ["weight"]);
    }

    #[test]
    fn vitals_blood_pressure_needs_both_in_order() {
        let errors = form(&[("systolic", "120")]).check().expect_err("half");
        assert_eq!(fields(&errors), ["diastolic"]);
        let errors = form(&[("systolic", "80"), ("diastolic", "120")])
            .check()
            .expect_err("swapped");
        assert_eq!(fields(&errors), ["diastolic"]);
    }

    #[test]
    fn vitals_empty_or_garbage_rejected() {
        let errors = form(&[]).check().expect_err("empty");
        assert_eq!(errors.len(), 1);
        for bad in ["abc", "NaN", "inf", "1e400", "12345678901234"] {
            let errors = form(&[("height", bad)]).check().expect_err(bad);
            assert_eq!(fields(&errors), ["height"], "{bad}");
        }
    }
}
