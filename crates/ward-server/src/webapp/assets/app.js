// Ward web app: registers the service worker, and locks an idle page.
//
// The server locks a session that has not been used for a while (the
// header bar's data-lock-secs). Before that moment this script shows a
// warning with a countdown; then it removes the page's <main> from the
// document, keeps it in memory only (never in localStorage, sessionStorage
// or IndexedDB), locks the session on the server and shows a PIN form. The
// right PIN puts <main> back, with whatever the user had typed, so a form
// can still be sent. A passkey unlocks too, where the browser and the
// server's address allow passkeys. Every page works without this script:
// the server shows its own lock page instead.
"use strict";
(function () {
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.register("/app/sw.js", { scope: "/app" }).catch(function () {});
  }

  // Passkey unlock, where the browser has passkeys and the server a DNS
  // name (browsers refuse passkeys on an IP address).
  var passkeys = !!window.PublicKeyCredential && !/^[0-9.]+$|:/.test(window.location.hostname);

  function send(path, fields, token) {
    var body = new URLSearchParams();
    body.set("csrf", token);
    Object.keys(fields).forEach(function (name) { body.set(name, fields[name]); });
    return fetch(path, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      cache: "no-store",
      redirect: "manual",
      headers: { "Accept": "application/json" }
    });
  }

  function fromBase64Url(text) {
    var base64 = text.replace(/-/g, "+").replace(/_/g, "/");
    var binary = atob(base64 + "===".slice((base64.length + 3) % 4));
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) {
      bytes[i] = binary.charCodeAt(i);
    }
    return bytes.buffer;
  }

  function toBase64Url(buffer) {
    var binary = "";
    var bytes = new Uint8Array(buffer);
    for (var i = 0; i < bytes.length; i++) {
      binary += String.fromCharCode(bytes[i]);
    }
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function readBody(response) {
    return response.json().catch(function () { return {}; });
  }

  // Resolves to the server's response body: {ok}, {error} or {signed_out}.
  function passkeyUnlock(token) {
    return send("/app/unlock/passkey/start", {}, token).then(function (response) {
      return readBody(response).then(function (body) {
        if (!response.ok) {
          throw body;
        }
        var publicKey = body.publicKey;
        publicKey.challenge = fromBase64Url(publicKey.challenge);
        (publicKey.allowCredentials || []).forEach(function (allowed) {
          allowed.id = fromBase64Url(allowed.id);
        });
        return navigator.credentials.get({ publicKey: publicKey });
      });
    }).then(function (credential) {
      var response = credential.response;
      var assertion = {
        id: credential.id,
        rawId: toBase64Url(credential.rawId),
        type: credential.type,
        response: {
          authenticatorData: toBase64Url(response.authenticatorData),
          clientDataJSON: toBase64Url(response.clientDataJSON),
          signature: toBase64Url(response.signature),
          userHandle: response.userHandle ? toBase64Url(response.userHandle) : null
        },
        extensions: credential.getClientExtensionResults()
      };
      return send("/app/unlock/passkey/finish", { credential: JSON.stringify(assertion) }, token)
        .then(readBody);
    }).catch(function (failure) {
      if (failure && (failure.error || failure.signed_out)) {
        return failure;
      }
      return { error: "The passkey was not used. Try again, or enter your PIN." };
    });
  }

  function passkeyButton() {
    var button = document.createElement("button");
    button.type = "button";
    button.id = "passkey-unlock";
    button.className = "secondary wide passkey-unlock";
    button.textContent = "Unlock with a passkey";
    return button;
  }

  // The server's lock page (after a reload): its form works without
  // script; this adds the passkey button.
  var serverLock = document.getElementById("unlock-form");
  if (serverLock && passkeys) {
    var serverButton = passkeyButton();
    var serverError = document.createElement("p");
    serverError.className = "error";
    serverError.setAttribute("role", "alert");
    serverError.hidden = true;
    serverLock.parentNode.insertBefore(serverButton, serverLock.nextSibling);
    serverLock.parentNode.insertBefore(serverError, serverButton.nextSibling);
    serverButton.addEventListener("click", function () {
      serverButton.disabled = true;
      var token = serverLock.querySelector("input[name=csrf]").value;
      var next = serverLock.querySelector("input[name=next]").value || "/app";
      passkeyUnlock(token).then(function (body) {
        serverButton.disabled = false;
        if (body.ok) {
          window.location.assign(next);
        } else if (body.signed_out) {
          window.location.assign(body.location || "/app/signed-out");
        } else {
          serverError.textContent = body.error;
          serverError.hidden = false;
        }
      });
    });
  }

  var bar = document.querySelector("header.bar[data-lock-secs]");
  if (!bar) {
    return;
  }
  var lockSecs = parseInt(bar.getAttribute("data-lock-secs"), 10);
  if (!(lockSecs > 0)) {
    return;
  }
  var signoutSecs = parseInt(bar.getAttribute("data-signout-secs"), 10) || lockSecs;
  // When the session signs out before it would lock, the page leaves for
  // the sign-out instead of locking.
  var signOutOnly = lockSecs >= signoutSecs;
  var csrfField = bar.querySelector("input[name=csrf]");
  var csrf = csrfField ? csrfField.value : "";
  // The warning shows for the last third of the period, at most a minute.
  var warnSecs = Math.max(2, Math.min(60, Math.floor(lockSecs / 3)));
  // While the user works in the page, tell the server at most this often.
  var aliveEveryMs = Math.max(1000, Math.min(30000, lockSecs * 250));
  // The server last saw this session no earlier than the start of the
  // navigation. It locks lockSecs after that, so the page locks one second
  // sooner.
  var lastSeen = performance.timeOrigin || Date.now();
  var locked = false;
  var main = null;
  var mainParent = null;
  var mainNext = null;
  var focusBefore = null;
  var warning = null;
  var screen = null;
  var aliveInFlight = false;

  function post(path, fields) {
    return send(path, fields, csrf);
  }

  function signedOut(location) {
    window.location.assign(location || "/app/signed-out?reason=timeout");
  }

  function alive() {
    if (aliveInFlight) {
      return;
    }
    aliveInFlight = true;
    var sent = Date.now();
    post("/app/alive", {}).then(function (response) {
      aliveInFlight = false;
      if (response.status === 204) {
        lastSeen = sent;
        hideWarning();
      } else if (response.status === 423) {
        lock(false);
      } else if (response.status === 401) {
        signedOut();
      }
    }).catch(function () { aliveInFlight = false; });
  }

  function activity() {
    if (locked) {
      return;
    }
    if (warning || Date.now() - lastSeen >= aliveEveryMs) {
      alive();
    }
  }

  function element(tag, attributes, text) {
    var node = document.createElement(tag);
    Object.keys(attributes || {}).forEach(function (name) { node.setAttribute(name, attributes[name]); });
    if (text) {
      node.textContent = text;
    }
    return node;
  }

  function showWarning(left) {
    if (!warning) {
      warning = element("div", {
        id: "idle-warning",
        "class": "idle-warning",
        role: "alertdialog",
        "aria-labelledby": "idle-warning-title",
        "aria-describedby": "idle-countdown"
      });
      warning.appendChild(element("p", { id: "idle-warning-title", "class": "idle-title" },
        signOutOnly ? "Ward will sign you out soon" : "Ward will lock soon"));
      warning.appendChild(element("p", { id: "idle-countdown", "aria-live": "polite" }, ""));
      var stay = element("button", { type: "button", id: "idle-stay", "class": "wide" }, "Keep working");
      stay.addEventListener("click", alive);
      warning.appendChild(stay);
      document.body.appendChild(warning);
    }
    var text = (signOutOnly ? "Signing out in " : "Locking in ") + left + (left === 1 ? " second" : " seconds") + ".";
    var countdown = warning.querySelector("#idle-countdown");
    if (countdown.textContent !== text) {
      countdown.textContent = text;
    }
  }

  function hideWarning() {
    if (warning) {
      warning.remove();
      warning = null;
    }
  }

  function lock(tellServer) {
    if (locked) {
      return;
    }
    locked = true;
    hideWarning();
    main = document.getElementById("main");
    if (main) {
      if (main.contains(document.activeElement)) {
        focusBefore = document.activeElement;
      }
      mainParent = main.parentNode;
      mainNext = main.nextSibling;
      main.remove();
    }
    bar.setAttribute("inert", "");
    bar.setAttribute("aria-hidden", "true");
    showLockScreen();
    if (tellServer) {
      post("/app/lock", {}).catch(function () {});
    }
  }

  function showLockScreen() {
    screen = element("main", { id: "lock-screen", "class": "lock-screen" });
    var section = element("section", { "class": "lock", "aria-labelledby": "lock-title" });
    section.appendChild(element("h1", { id: "lock-title" }, "Ward is locked"));
    section.appendChild(element("p", { "class": "notice", role: "status" },
      "Ward locked itself because it was not used for a while. Enter your PIN to continue where you left off."));
    var error = element("p", { id: "lock-error", "class": "error", role: "alert" });
    error.hidden = true;
    section.appendChild(error);
    var form = element("form", { id: "lock-form", method: "post", action: "/app/unlock" });
    form.appendChild(element("label", { "for": "lock-pin" }, "PIN"));
    var pin = element("input", {
      id: "lock-pin", name: "pin", type: "password", inputmode: "numeric",
      autocomplete: "off", maxlength: "12", required: ""
    });
    form.appendChild(pin);
    form.appendChild(element("button", { type: "submit", "class": "wide" }, "Unlock"));
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      unlock(pin, error, form);
    });
    section.appendChild(form);
    if (passkeys) {
      var button = passkeyButton();
      button.addEventListener("click", function () {
        button.disabled = true;
        var sent = Date.now();
        passkeyUnlock(csrf).then(function (body) {
          button.disabled = false;
          if (body.ok) {
            lastSeen = sent;
            unlocked();
          } else if (body.signed_out) {
            signedOut(body.location);
          } else {
            error.textContent = body.error;
            error.hidden = false;
          }
        });
      });
      section.appendChild(button);
    }
    var out = element("form", { method: "post", action: "/app/signout", "class": "lock-signout" });
    out.appendChild(element("input", { type: "hidden", name: "csrf", value: csrf }));
    out.appendChild(element("button", { type: "submit", "class": "secondary wide" }, "Sign out"));
    section.appendChild(out);
    screen.appendChild(section);
    bar.parentNode.insertBefore(screen, bar.nextSibling);
    pin.focus();
  }

  function unlock(pin, error, form) {
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    var sent = Date.now();
    post("/app/unlock", { pin: pin.value }).then(function (response) {
      return response.json().then(function (body) { return body; }, function () { return {}; });
    }).then(function (body) {
      button.disabled = false;
      pin.value = "";
      if (body.ok) {
        lastSeen = sent;
        unlocked();
      } else if (body.signed_out) {
        signedOut(body.location);
      } else {
        error.textContent = body.error || "The PIN could not be checked. Try again.";
        error.hidden = false;
        pin.focus();
      }
    }).catch(function () {
      button.disabled = false;
      error.textContent = "The server did not answer. Check the connection and try again.";
      error.hidden = false;
    });
  }

  function unlocked() {
    if (screen) {
      screen.remove();
      screen = null;
    }
    if (main && mainParent) {
      mainParent.insertBefore(main, mainNext);
    }
    bar.removeAttribute("inert");
    bar.removeAttribute("aria-hidden");
    main = null;
    locked = false;
    if (focusBefore && document.contains(focusBefore)) {
      focusBefore.focus();
    }
    focusBefore = null;
  }

  function tick() {
    if (Date.now() >= lastSeen + signoutSecs * 1000) {
      // The server has ended the session; this ends it in the browser too.
      window.location.assign("/app/timeout");
      return;
    }
    if (locked) {
      return;
    }
    var left = Math.ceil((lastSeen + (lockSecs - 1) * 1000 - Date.now()) / 1000);
    if (left <= 0) {
      if (signOutOnly) {
        window.location.assign("/app/timeout");
        return;
      }
      lock(true);
    } else if (left <= warnSecs) {
      showWarning(left);
    } else {
      hideWarning();
    }
  }

  ["pointerdown", "keydown", "input", "wheel", "touchstart"].forEach(function (name) {
    document.addEventListener(name, activity, { capture: true, passive: true });
  });
  document.addEventListener("visibilitychange", tick);
  setInterval(tick, 250);
})();
