// Passkey ceremonies of Ward's sign-in pages: adding a passkey on
// /oauth/passkeys, and using one in place of a code on the two-step
// verification page. Served as a file because the pages' Content Security
// Policy forbids inline script.
"use strict";

function fromBase64Url(text) {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "===".slice((base64.length + 3) % 4);
  const binary = atob(padded);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) {
    bytes[i] = binary.charCodeAt(i);
  }
  return bytes.buffer;
}

function toBase64Url(buffer) {
  let binary = "";
  for (const byte of new Uint8Array(buffer)) {
    binary += String.fromCharCode(byte);
  }
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

async function readJson(response) {
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body.error || "The server rejected the request. Reload the page and try again.");
  }
  return body;
}

async function register(status) {
  const start = await fetch("/oauth/passkey/register/start", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: "{}",
  });
  const publicKey = (await readJson(start)).publicKey;
  publicKey.challenge = fromBase64Url(publicKey.challenge);
  publicKey.user.id = fromBase64Url(publicKey.user.id);
  for (const excluded of publicKey.excludeCredentials || []) {
    excluded.id = fromBase64Url(excluded.id);
  }

  const credential = await navigator.credentials.create({ publicKey });
  const response = credential.response;
  const attestation = {
    id: credential.id,
    rawId: toBase64Url(credential.rawId),
    type: credential.type,
    response: {
      attestationObject: toBase64Url(response.attestationObject),
      clientDataJSON: toBase64Url(response.clientDataJSON),
      transports: response.getTransports ? response.getTransports() : undefined,
    },
    extensions: credential.getClientExtensionResults(),
  };

  const finish = await fetch("/oauth/passkey/register/finish", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(attestation),
  });
  const result = await readJson(finish);
  status.textContent = "Passkey added. This account now has " + result.passkeys + " passkey(s).";
}

async function authenticate(form) {
  const csrf = form.elements.namedItem("csrf").value;
  const start = await fetch("/oauth/passkey/auth/start", {
    method: "POST",
    credentials: "same-origin",
    body: new URLSearchParams({ csrf }),
  });
  const publicKey = (await readJson(start)).publicKey;
  publicKey.challenge = fromBase64Url(publicKey.challenge);
  for (const allowed of publicKey.allowCredentials || []) {
    allowed.id = fromBase64Url(allowed.id);
  }

  const credential = await navigator.credentials.get({ publicKey });
  const response = credential.response;
  const assertion = {
    id: credential.id,
    rawId: toBase64Url(credential.rawId),
    type: credential.type,
    response: {
      authenticatorData: toBase64Url(response.authenticatorData),
      clientDataJSON: toBase64Url(response.clientDataJSON),
      signature: toBase64Url(response.signature),
      userHandle: response.userHandle ? toBase64Url(response.userHandle) : null,
    },
    extensions: credential.getClientExtensionResults(),
  };
  form.elements.namedItem("credential").value = JSON.stringify(assertion);
  form.submit();
}

function wire(button, status, action) {
  if (!window.PublicKeyCredential) {
    status.textContent = "This browser does not support passkeys.";
    button.disabled = true;
    return;
  }
  button.addEventListener("click", () => {
    button.disabled = true;
    status.textContent = "";
    action().then(() => {
      button.disabled = false;
    }).catch((error) => {
      status.textContent = error.message || "The passkey could not be used.";
      button.disabled = false;
    });
  });
}

const passkeyStatus = document.getElementById("passkey-status");
const signInForm = document.getElementById("passkey-form");
const signInButton = document.getElementById("passkey-button");
const registerButton = document.getElementById("passkey-register");
if (signInForm && signInButton && passkeyStatus) {
  wire(signInButton, passkeyStatus, () => authenticate(signInForm));
}
if (registerButton && passkeyStatus) {
  wire(registerButton, passkeyStatus, () => register(passkeyStatus));
}
