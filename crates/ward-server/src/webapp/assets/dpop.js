// Ward web app: the browser's device key and its DPoP proofs, shared by
// the enrollment page (enroll.js) and the service worker (sw.js, through
// importScripts), so that both store the key and sign proofs the same way.
//
// The key is a non-extractable P-256 CryptoKey kept in IndexedDB with its
// public JWK (a key handle, never patient data). A proof is a DPoP-shaped
// JWT (RFC 9449) with the method (htm), the URL without query (htu), the
// time (iat) and a unique id (jti), signed with ES256.
"use strict";
self.WardDevice = (function () {
  var DB_NAME = "ward-app";
  var DB_STORE = "keys";
  var KEY_ID = "device";

  function openDb() {
    return new Promise(function (resolve, reject) {
      var request = indexedDB.open(DB_NAME, 1);
      request.onupgradeneeded = function () { request.result.createObjectStore(DB_STORE); };
      request.onsuccess = function () { resolve(request.result); };
      request.onerror = function () { reject(request.error); };
    });
  }

  // Resolves to the stored key, or null when there is none or IndexedDB
  // cannot be read.
  function readKey() {
    return openDb().then(function (db) {
      return new Promise(function (resolve) {
        var get = db.transaction(DB_STORE, "readonly").objectStore(DB_STORE).get(KEY_ID);
        get.onsuccess = function () { db.close(); resolve(get.result || null); };
        get.onerror = function () { db.close(); resolve(null); };
      });
    }).catch(function () { return null; });
  }

  // Stores the key, or removes it when `value` is null.
  function writeKey(value) {
    return openDb().then(function (db) {
      return new Promise(function (resolve, reject) {
        var tx = db.transaction(DB_STORE, "readwrite");
        if (value) {
          tx.objectStore(DB_STORE).put(value, KEY_ID);
        } else {
          tx.objectStore(DB_STORE).delete(KEY_ID);
        }
        tx.oncomplete = function () { db.close(); resolve(); };
        tx.onerror = function () { db.close(); reject(tx.error); };
      });
    });
  }

  function base64url(bytes) {
    var text = "";
    var array = new Uint8Array(bytes);
    for (var i = 0; i < array.length; i++) {
      text += String.fromCharCode(array[i]);
    }
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function encodeJson(value) {
    return base64url(new TextEncoder().encode(JSON.stringify(value)));
  }

  // Resolves to a proof of `key` for a request with `method` to `url` (a URL).
  function proof(key, method, url) {
    var header = { typ: "dpop+jwt", alg: "ES256", jwk: key.jwk };
    var claims = {
      htm: method,
      htu: url.origin + url.pathname,
      iat: Math.floor(Date.now() / 1000),
      jti: self.crypto.randomUUID()
    };
    var input = encodeJson(header) + "." + encodeJson(claims);
    return self.crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, key.privateKey,
      new TextEncoder().encode(input)).then(function (signature) {
      return input + "." + base64url(signature);
    });
  }

  return { readKey: readKey, writeKey: writeKey, proof: proof };
})();
