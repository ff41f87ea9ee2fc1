"""``/v1/perch.js``: the first-party script that sends a page's behavioural signals (core.signals).

A few KB, no third-party calls. It sends, in batches of at most 50 with ``sendBeacon`` (``fetch``
with ``keepalive`` where that is refused) to the edge's ``/v1/signals`` on the same host:

* ``page_view`` on load, ``time_on_page`` and the deepest ``scroll`` when the page is hidden, each
  with the page's category from ``<meta name="perch:category" content="running-shoes">``;
* what the site calls: ``perch.search(term, {category})``, ``perch.addToCart({category, value})``,
  ``perch.purchase({value})``, ``perch.track(name, {category, value})`` (a ``custom`` signal).

A click inside a ranked slot (an element with ``data-perch-tokens``, edge.pages) is an outcome of
the clicked child's position: its token goes to ``/v1/events`` (``{"token", "value": 1}``), so the
click is credited to that item at that position.

The visitor is who their cookies say at the edge: the script never names anyone. Nothing is sent
without consent (the edge records nothing then either).
"""

from __future__ import annotations

__all__ = ["SCRIPT"]

SCRIPT = """\
(function () {
  "use strict";
  if (window.perch) return;
  var nav = navigator, doc = document;
  if (nav.globalPrivacyControl || nav.doNotTrack === "1" || /(^|; )perch_consent=0/.test(doc.cookie)) {
    window.perch = { track: function () {}, search: function () {}, addToCart: function () {},
      purchase: function () {}, flush: function () {} };
    return;
  }
  var src = (doc.currentScript && doc.currentScript.src) || "/v1/perch.js";
  var url = src.replace(/perch\\.js(\\?.*)?$/, "signals");
  var queue = [], timer = null, started = Date.now(), deepest = 0;
  var meta = doc.querySelector('meta[name="perch:category"]');
  var pageCategory = meta && meta.content;

  function category(value) {
    if (!value) return undefined;
    var c = String(value).toLowerCase().replace(/[^a-z0-9 _\\-\\/.&]+/g, "-").replace(/^[^a-z0-9]+/, "");
    return c ? c.slice(0, 64) : undefined;
  }
  function send(body, to) {
    to = to || url;
    if (nav.sendBeacon && nav.sendBeacon(to, new Blob([body], { type: "application/json" }))) return;
    try {
      fetch(to, { method: "POST", body: body, keepalive: true, credentials: "same-origin",
        headers: { "content-type": "application/json" } }).catch(function () {});
    } catch (e) { /* the page must never break on us */ }
  }
  function flush() {
    if (timer) { clearTimeout(timer); timer = null; }
    while (queue.length) send(JSON.stringify({ schema: 1, signals: queue.splice(0, 50) }));
  }
  function signal(kind, options) {
    var o = options || {}, s = { kind: kind };
    var c = category(o.category || pageCategory);
    if (c) s.category = c;
    if (o.value !== undefined && o.value !== null && isFinite(+o.value)) s.value = +o.value;
    if (o.name) s.name = String(o.name).slice(0, 64);
    queue.push(s);
    if (queue.length >= 50) flush();
    else if (!timer) timer = setTimeout(flush, 2000);
  }

  addEventListener("scroll", function () {
    var h = doc.documentElement, seen = (scrollY + innerHeight) / Math.max(h.scrollHeight, 1);
    deepest = Math.max(deepest, Math.min(100, Math.round(seen * 100)));
  }, { passive: true });
  addEventListener("pagehide", function () {
    signal("time_on_page", { value: Math.min((Date.now() - started) / 1000, 86400) });
    if (deepest) signal("scroll", { value: deepest });
    flush();
  });
  signal("page_view");
  doc.addEventListener("click", function (e) {
    var node = e.target, list = node && node.closest && node.closest("[data-perch-tokens]");
    if (!list || node === list) return;
    while (node && node.parentElement !== list) node = node.parentElement;
    var tokens = list.getAttribute("data-perch-tokens").split(" ");
    // One child per item, or no telling which item was clicked: then nothing is credited.
    if (!node || list.children.length !== tokens.length) return;
    var token = tokens[Array.prototype.indexOf.call(list.children, node)];
    if (token) send(JSON.stringify({ token: token, value: 1 }), url.replace(/signals$/, "events"));
  }, true);

  window.perch = {
    track: function (name, o) { o = o || {}; o.name = name; signal("custom", o); },
    search: function (term, o) { o = o || {}; o.name = term; signal("search", o); },
    addToCart: function (o) { signal("add_to_cart", o); },
    purchase: function (o) { signal("purchase", o); },
    flush: flush
  };
})();
"""
