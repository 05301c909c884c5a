// Ward web app service worker. It caches only the static files listed
// here and never a page, a form reply or any other response, because
// those carry patient data. Every other request goes to the network.
"use strict";
var CACHE = "ward-app-static-v1";
var STATIC = [
  "/app/static/app.css",
  "/app/static/app.js",
  "/app/static/icon.svg",
  "/app/manifest.webmanifest"
];

self.addEventListener("install", function (event) {
  event.waitUntil(caches.open(CACHE).then(function (cache) { return cache.addAll(STATIC); }));
});

self.addEventListener("activate", function (event) {
  event.waitUntil(caches.keys().then(function (names) {
    return Promise.all(names.filter(function (name) { return name !== CACHE; })
      .map(function (name) { return caches.delete(name); }));
  }));
});

self.addEventListener("fetch", function (event) {
  var url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin ||
      STATIC.indexOf(url.pathname) === -1) {
    return;
  }
  event.respondWith(caches.match(event.request).then(function (hit) {
    return hit || fetch(event.request);
  }));
});
