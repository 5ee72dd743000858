// On pages that show session data (home, sessions): never show them again from the
// back/forward cache. Chromium keeps even `Cache-Control: no-store` pages there and, after a
// logout made from the page itself, restores them on Back: the greeting would come back.
// So: hide the page as it is stored, and on restore ask the server again, which shows the
// page if the session is still live and otherwise sends the visitor to the login form.
// A file, not inline script: the Content-Security-Policy allows only 'self' scripts.
"use strict";
window.addEventListener("pagehide", (event) => {
  if (event.persisted) document.body.hidden = true;
});
window.addEventListener("pageshow", (event) => {
  if (event.persisted) window.location.reload();
});
