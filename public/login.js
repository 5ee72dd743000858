// The login page's messages (?error=1 after a failed attempt, ?signed-out=1 after a logout); the
// username kept after a failed attempt (remembered in this tab's sessionStorage when the form is
// sent, never the password, and never in the URL, which logs and history keep); one submit per
// click.
// A file, not inline script: the Content-Security-Policy allows only 'self' scripts.
"use strict";
const KEPT = "login-username";
const params = new URLSearchParams(window.location.search);
const form = document.querySelector("form");
const username = document.getElementById("username");
const password = document.getElementById("password");

function show(id) {
  const element = document.getElementById(id);
  if (element) element.hidden = false;
}

if (params.get("error") === "1") {
  show("login-error");
  const kept = sessionStorage.getItem(KEPT);
  if (kept && username && password) {
    username.value = kept;
    password.focus();
  }
} else {
  sessionStorage.removeItem(KEPT);
}
if (params.get("signed-out") === "1") show("signed-out");
if (form && username) {
  form.addEventListener("submit", (event) => {
    // One sign-in per click: a second submit while the first is on its way is dropped (a
    // double-click would otherwise start two sessions, as the browser has no session to use up).
    if (form.dataset.sent) {
      event.preventDefault();
      return;
    }
    form.dataset.sent = "1";
    sessionStorage.setItem(KEPT, username.value);
  });
  // Back to this page from the back/forward cache: the form can be sent again.
  window.addEventListener("pageshow", () => delete form.dataset.sent);
}
