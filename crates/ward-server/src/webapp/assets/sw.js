// Ward web app service worker.
//
// It caches only the static files listed here and never a page, a form
// reply or any other response, because those carry patient data.
//
// Once this browser is enrolled as a device (enroll.js keeps a
// non-extractable P-256 key in IndexedDB), it adds a proof of that key to
// every other same-origin /app request. dpop.js reads the key and signs
// the proof, a DPoP-shaped JWT (RFC 9449). The server refuses a session
// bound to the key when a request lacks a valid proof.
"use strict";
importScripts("/app/static/dpop.js");
var CACHE = "ward-app-static-v3";
var STATIC = [
  "/app/static/app.css",
  "/app/static/app.js",
  "/app/static/icon.svg",
  "/app/manifest.webmanifest"
];
// Requests that never need a proof: the static files and the worker itself.
var NO_PROOF = ["/app/static/", "/app/sw.js", "/app/manifest.webmanifest"];
var deviceKey = null;

self.addEventListener("install", function (event) {
  event.waitUntil(caches.open(CACHE).then(function (cache) { return cache.addAll(STATIC); })
    .then(function () { return self.skipWaiting(); }));
});

self.addEventListener("activate", function (event) {
  event.waitUntil(caches.keys().then(function (names) {
    return Promise.all(names.filter(function (name) { return name !== CACHE; })
      .map(function (name) { return caches.delete(name); }));
  }).then(function () { return self.clients.claim(); }));
});

self.addEventListener("message", function (event) {
  if (event.data === "device-key-changed") {
    deviceKey = null;
  }
});

// Resolves to the device key, read once from IndexedDB and kept until
// enroll.js reports a change.
function loadKey() {
  if (deviceKey) {
    return Promise.resolve(deviceKey);
  }
  return WardDevice.readKey().then(function (key) {
    deviceKey = key;
    return key;
  });
}

function withProof(request, url) {
  return loadKey().then(function (key) {
    if (!key) {
      return fetch(request);
    }
    var body = request.method === "GET" || request.method === "HEAD"
      ? Promise.resolve(undefined) : request.clone().arrayBuffer();
    return Promise.all([WardDevice.proof(key, request.method, url), body]).then(function (parts) {
      var headers = new Headers(request.headers);
      headers.set("DPoP", parts[0]);
      return fetch(request.url, {
        method: request.method,
        headers: headers,
        body: parts[1],
        credentials: "same-origin",
        cache: "no-store",
        referrerPolicy: "no-referrer",
        // A page load must see the redirect itself, so that the browser
        // loads the next page, with its own proof, through this worker.
        redirect: request.mode === "navigate" ? "manual" : request.redirect
      });
    });
  });
}

self.addEventListener("fetch", function (event) {
  var request = event.request;
  var url = new URL(request.url);
  if (url.origin !== self.location.origin) {
    return;
  }
  if (request.method !== "GET" || STATIC.indexOf(url.pathname) === -1) {
    // Not a cached file: the network, with a proof where one is needed.
    var exempt = NO_PROOF.some(function (prefix) { return url.pathname.indexOf(prefix) === 0; });
    if (url.pathname.indexOf("/app") === 0 && !exempt && !request.headers.has("DPoP")) {
      event.respondWith(withProof(request, url));
    }
    return;
  }
  event.respondWith(caches.match(request).then(function (hit) {
    return hit || fetch(request);
  }));
});
