// The dashboard's only script: the Overview refreshes its live part every few seconds.
"use strict";
(function () {
  const live = document.querySelector("[data-refresh]");
  if (!live) {
    return;
  }
  const toggle = document.getElementById("auto-refresh");
  const stamp = document.getElementById("refreshed");
  const every = Number(live.dataset.every) || 5000;
  let busy = false;

  async function refresh() {
    if (busy || (toggle && !toggle.checked)) {
      return;
    }
    busy = true;
    try {
      const response = await fetch(live.dataset.refresh, {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
      });
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      live.innerHTML = await response.text();
      if (stamp) {
        stamp.textContent = "updated " + new Date().toLocaleTimeString();
        stamp.classList.remove("stale");
      }
    } catch (problem) {
      if (stamp) {
        stamp.textContent = "not updated: " + problem.message;
        stamp.classList.add("stale");
      }
    } finally {
      busy = false;
    }
  }

  window.setInterval(refresh, every);
})();
