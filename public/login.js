// The login page's messages (?error=1 after a failed attempt, ?signed-out=1 after a logout), and
// the username kept after a failed attempt: remembered in this tab's sessionStorage when the form
// is sent, never the password, and never in the URL (which logs and history keep).
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
if (form && username) form.addEventListener("submit", () => sessionStorage.setItem(KEPT, username.value));
