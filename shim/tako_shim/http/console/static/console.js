// Tako VM console: live output over Server-Sent Events (progressive enhancement; the page works without it).
// Every chunk is added as a text node: output is never parsed as HTML.
(function () {
  "use strict";
  function chunkText(raw) {
    var data;
    try { data = JSON.parse(raw); } catch (e) { return raw; }
    if (typeof data === "string") { return data; }
    if (data && typeof data === "object") {
      var fields = ["text", "data", "chunk", "line", "output"];
      for (var i = 0; i < fields.length; i++) {
        if (typeof data[fields[i]] === "string") { return data[fields[i]]; }
      }
    }
    return raw;
  }
  function statusText(raw) {
    var data;
    try { data = JSON.parse(raw); } catch (e) { return raw; }
    if (typeof data === "string") { return data; }
    return data && typeof data.status === "string" ? data.status : "";
  }
  function start() {
    var section = document.getElementById("output");
    if (!section || !section.dataset.events || !window.EventSource) { return; }
    var out = { stdout: document.getElementById("stdout"), stderr: document.getElementById("stderr") };
    var cleared = false;
    var source = new EventSource(section.dataset.events);
    function append(kind) {
      return function (event) {
        if (!cleared) { out.stdout.textContent = ""; out.stderr.textContent = ""; cleared = true; }
        out[kind].appendChild(document.createTextNode(chunkText(event.data)));
        section.dataset.chunks = String(Number(section.dataset.chunks || "0") + 1);
      };
    }
    source.addEventListener("stdout", append("stdout"));
    source.addEventListener("stderr", append("stderr"));
    source.addEventListener("status", function (event) {
      var status = statusText(event.data);
      var badge = document.getElementById("status");
      if (status && badge) { badge.textContent = status; badge.className = "badge " + status; }
    });
    source.addEventListener("result", function () {
      source.close();
      window.location.reload();  // the finished record: artifacts, error, timing
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
