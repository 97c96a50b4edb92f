// sagabox console: the only script. It redraws a live part of the page (an unfinished
// saga) from a fresh copy, backing off when the server does not answer, and wires the
// "select all" boxes of the dead-letter lists. Every page works without it.
(function () {
  "use strict";
  function refresh(el, delay) {
    var every = parseInt(el.dataset.refresh, 10);
    setTimeout(function () {
      fetch(location.href, { credentials: "same-origin", headers: { "X-Console-Refresh": "1" } })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (body) {
          var fresh = new DOMParser().parseFromString(body, "text/html").getElementById(el.id);
          if (!fresh) { return; }
          el.replaceWith(fresh);
          if (fresh.dataset.refresh) { refresh(fresh, parseInt(fresh.dataset.refresh, 10)); }
        })
        .catch(function () { refresh(el, Math.min(delay * 2, 60000)); });
    }, delay || every);
  }
  document.querySelectorAll("[data-refresh]").forEach(function (el) { refresh(el); });
  document.querySelectorAll("input[data-select-all]").forEach(function (box) {
    box.addEventListener("change", function () {
      box.form.querySelectorAll('input[name="' + box.dataset.selectAll + '"]').forEach(function (c) { c.checked = box.checked; });
    });
  });
})();
