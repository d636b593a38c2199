"use strict";
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = document.getElementById("login-token").value;
  const error = document.getElementById("login-error");
  const answer = await fetch("/api/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token }),
  });
  if (answer.ok) {
    location.href = "/";
  } else {
    error.textContent = answer.status === 401 ? "Wrong token." : `Login failed (${answer.status}).`;
    error.hidden = false;
  }
});
