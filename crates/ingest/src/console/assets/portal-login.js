// Herald portal: a link of the form /portal/login#token=hat_… logs in
// without the token ever reaching a server log, a proxy or a Referer: the
// fragment stays in the browser, and this script posts it in the form's
// body, then forgets it.
(function () {
  "use strict";
  function logInFromFragment() {
    var match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
    if (!match) {
      return;
    }
    history.replaceState(null, "", window.location.pathname);
    var form = document.getElementById("login");
    var field = document.getElementById("token");
    if (!form || !field) {
      return;
    }
    field.value = decodeURIComponent(match[1]);
    form.submit();
  }
  logInFromFragment();
  // A link followed while this page is open changes only the fragment.
  window.addEventListener("hashchange", logInFromFragment);
})();
