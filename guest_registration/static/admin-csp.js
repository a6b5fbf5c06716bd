// Flask-Admin's templates were written for pages without a Content-Security-Policy:
// inline onclick handlers and javascript: links. Ours refuses both, so the few
// templates that had them are overridden with data attributes, handled here.
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var link = event.target.closest("a");
    if (!link) { return; }
    var action = link.getAttribute("data-model-action");
    if (action && window.modelActions) {  // "With selected" → Delete, ...
      event.preventDefault();
      window.modelActions.execute(action);
    } else if (/^(javascript:|#$)/.test(link.getAttribute("href") || "")) {
      event.preventDefault();  // inert links (menus, current page): never navigate
    }
  }, true);  // capture: before Bootstrap's and Flask-Admin's own handlers
  document.addEventListener("submit", function (event) {
    var message = event.target.getAttribute && event.target.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); }
  }, true);
})();
