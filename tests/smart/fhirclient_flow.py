"""Runs a SMART standalone launch against a Ward server with the official
Python SMART on FHIR client (the `fhirclient` package) and reads the
patient in context through its FHIR models.

fhirclient discovers the OAuth endpoints from the CapabilityStatement,
builds the authorization URL (with PKCE S256) and exchanges the code. The
user's part, signing in with a password and a TOTP code and approving the
request, is done here by posting the HTML forms with `requests`.

Settings come from the environment: WARD_ORIGIN, WARD_CA (the CA
certificate to trust), WARD_CLIENT_ID, WARD_REDIRECT_URI, WARD_USERNAME,
WARD_PASSWORD, WARD_TOTP_SECRET and WARD_PATIENT_ID. Exits non-zero with a
message on the first failed check.
"""

import base64
import hashlib
import hmac
import os
import re
import struct
import sys
import time
import urllib.parse

import requests
from fhirclient import client
from fhirclient.models import patient as patient_model


def totp(secret_base32):
    """Returns the current RFC 6238 code (HMAC-SHA1, 6 digits, 30 s)."""
    padded = secret_base32 + "=" * (-len(secret_base32) % 8)
    key = base64.b32decode(padded.upper())
    counter = struct.pack(">Q", int(time.time()) // 30)
    mac = hmac.new(key, counter, hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 1_000_000:06d}"


def csrf_of(html):
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    if match is None:
        fail(f"no CSRF field in the page: {html[:500]}")
    return match.group(1)


def fail(message):
    print(f"fhirclient flow failed: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    env = os.environ
    origin = env["WARD_ORIGIN"]
    ca = env["WARD_CA"]
    # fhirclient's own requests session trusts the Ward CA through this.
    os.environ["REQUESTS_CA_BUNDLE"] = ca

    settings = {
        "app_id": env["WARD_CLIENT_ID"],
        "api_base": f"{origin}/fhir",
        "redirect_uri": env["WARD_REDIRECT_URI"],
        "scope": "openid fhirUser launch/patient patient/Patient.rs",
    }
    smart = client.FHIRClient(settings=settings)
    authorize_url = smart.authorize_url
    if authorize_url is None:
        fail("fhirclient found no authorize endpoint in the CapabilityStatement")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(authorize_url).query)
    if query.get("code_challenge_method") != ["S256"]:
        fail(f"fhirclient did not send PKCE S256: {sorted(query)}")

    browser = requests.Session()
    browser.verify = ca
    page = browser.get(authorize_url, allow_redirects=False)
    if page.status_code != 200 or 'action="/oauth/login"' not in page.text:
        fail(f"no sign-in page: {page.status_code} {page.text[:500]}")
    page = browser.post(
        f"{origin}/oauth/login",
        data={
            "csrf": csrf_of(page.text),
            "username": env["WARD_USERNAME"],
            "password": env["WARD_PASSWORD"],
        },
        allow_redirects=False,
    )
    if 'action="/oauth/mfa"' not in page.text:
        fail(f"password sign-in failed: {page.text[:500]}")
    page = browser.post(
        f"{origin}/oauth/mfa",
        data={"csrf": csrf_of(page.text), "code": totp(env["WARD_TOTP_SECRET"])},
        allow_redirects=False,
    )
    if 'action="/oauth/consent"' not in page.text:
        fail(f"TOTP check failed: {page.text[:500]}")
    done = browser.post(
        f"{origin}/oauth/consent",
        data={"csrf": csrf_of(page.text), "decision": "approve"},
        allow_redirects=False,
    )
    location = done.headers.get("Location")
    if done.status_code != 302 or location is None:
        fail(f"consent did not redirect: {done.status_code} {done.text[:500]}")

    smart.handle_callback(location)
    if not smart.ready:
        fail("fhirclient has no access token after the code exchange")
    if smart.patient_id != env["WARD_PATIENT_ID"]:
        fail(f"patient in context is {smart.patient_id!r}")

    patient = smart.patient
    if not isinstance(patient, patient_model.Patient) or patient.id != env["WARD_PATIENT_ID"]:
        fail("fhirclient did not read the patient in context")
    family = patient.name[0].family if patient.name else None
    print(f"read Patient/{patient.id} family={family}")


if __name__ == "__main__":
    main()
