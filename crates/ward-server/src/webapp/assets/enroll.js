// Ward web app: enrolls this browser as a device.
//
// Makes a P-256 signing key with WebCrypto that cannot be exported
// (extractable: false), keeps the CryptoKey in IndexedDB (a key handle,
// never patient data), and redeems the enrollment code with a proof signed
// by the key. The service worker then proves the key on every request.
// dpop.js, loaded before this script, stores the key and signs the proofs.
"use strict";
(function () {
  var form = document.getElementById("enroll-form");
  var status = document.getElementById("enroll-status");
  if (!form || !status) {
    return;
  }
  function say(text, isError) {
    status.textContent = text;
    status.className = isError ? "error" : "notice";
  }

  // Stores or removes the key, then sends the service worker a message to
  // read it again.
  function write(value) {
    return WardDevice.writeKey(value).then(function () {
      var worker = navigator.serviceWorker && navigator.serviceWorker.controller;
      if (worker) {
        worker.postMessage("device-key-changed");
      }
    });
  }

  // The worker must control this page before the session is bound, or the
  // next page would load without a proof.
  function workerReady() {
    if (!("serviceWorker" in navigator)) {
      return Promise.reject(new Error("This browser has no service workers, so it cannot be enrolled."));
    }
    return navigator.serviceWorker.register("/app/sw.js", { scope: "/app" }).then(function () {
      return navigator.serviceWorker.ready;
    }).then(function () {
      if (navigator.serviceWorker.controller) {
        return null;
      }
      return new Promise(function (resolve, reject) {
        var timer = setTimeout(function () {
          reject(new Error("The app's service worker did not start. Reload the page and try again."));
        }, 5000);
        navigator.serviceWorker.addEventListener("controllerchange", function () {
          clearTimeout(timer);
          resolve(null);
        });
      });
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (!window.crypto || !crypto.subtle || !window.indexedDB) {
      say("This browser cannot keep a device key, so it cannot be enrolled.", true);
      return;
    }
    var button = form.querySelector("button[type=submit]");
    var fields = new URLSearchParams(new FormData(form));
    var action = new URL(form.getAttribute("action"), window.location.href);
    var key = null;
    button.disabled = true;
    say("Making this browser's key…", false);
    workerReady().then(function () {
      return crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign"]);
    }).then(function (pair) {
      return crypto.subtle.exportKey("jwk", pair.publicKey).then(function (jwk) {
        key = { privateKey: pair.privateKey, jwk: { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y } };
        // Stored first, so that no request after the binding goes out
        // without a proof; removed again if the server refuses.
        return write(key);
      });
    }).then(function () {
      return WardDevice.proof(key, "POST", action);
    }).then(function (dpop) {
      return fetch(action.href, {
        method: "POST",
        body: fields,
        credentials: "same-origin",
        cache: "no-store",
        redirect: "manual",
        headers: { "Accept": "application/json", "DPoP": dpop }
      });
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (response.status !== 201) {
          if (body.signed_out && body.location) {
            window.location.assign(body.location);
          }
          throw new Error(body.error || "The server rejected the enrollment. Reload the page and try again.");
        }
        return body;
      });
    }).then(function () {
      say("This browser is enrolled.", false);
      window.location.assign("/app/security?enrolled=1");
    }).catch(function (error) {
      button.disabled = false;
      var undo = key ? write(null) : Promise.resolve();
      undo.catch(function () {}).then(function () {
        say(error && error.message ? error.message : "Enrolling failed. Try again.", true);
      });
    });
  });
})();
