// Shows the login error after a failed attempt (/public/login.html?error=1).
// A file, not inline script: the Content-Security-Policy allows only 'self' scripts.
"use strict";
if (new URLSearchParams(window.location.search).get("error") === "1") {
  const message = document.getElementById("login-error");
  if (message) message.hidden = false;
}
