// Ward web app: registers the service worker that caches the static files
// only. Every page works without this script.
"use strict";
if ("serviceWorker" in navigator) {
  navigator.serviceWorker.register("/app/sw.js", { scope: "/app/" }).catch(function () {});
}
