// Live regions: the daemon pushes each changed region of this page as a Server-Sent Event
// named after the region's id; the page swaps it in. No polling, no reload.
"use strict";
(function () {
  var view = document.body.dataset.view;
  var state = document.getElementById("live-state");
  if (!view || !window.EventSource) return;
  var source = new EventSource("/live?view=" + encodeURIComponent(view));
  function mark(text, cls) {
    if (!state) return;
    state.textContent = text;
    state.className = "live " + cls;
  }
  source.onopen = function () { mark("● live", "on"); };
  source.onerror = function () { mark("○ reconnecting", "off"); };
  document.querySelectorAll("[data-live]").forEach(function (el) {
    source.addEventListener(el.id, function (e) {
      // Keep keyboard focus where it was when the region it sits in is replaced.
      var focused = document.activeElement;
      var keep = focused && el.contains(focused) && focused.id ? focused.id : null;
      el.innerHTML = e.data;
      el.dataset.updated = String(Date.now());
      if (keep) {
        var again = document.getElementById(keep);
        if (again) again.focus();
      }
    });
  });
})();
