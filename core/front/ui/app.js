// The front's profile page: sign in with registry credentials, choose a content cache,
// and (admins) register and remove caches. It uses the caches API only; the credentials
// stay in this tab's memory and are sent with each API call.
"use strict";

const session = { user: null, authorization: null, admin: false };

function $(id) {
  return document.getElementById(id);
}

function showError(message) {
  $("error").textContent = message || "";
}

// One API call: JSON in and out; a registry-style error becomes an Error with its message.
async function call(method, path, body) {
  const headers = { "Authorization": session.authorization, "X-Content-Cache-UI": "1" };
  const init = { method: method, headers: headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let doc = null;
  if (text) {
    try {
      doc = JSON.parse(text);
    } catch (e) {
      doc = null;
    }
  }
  if (!response.ok) {
    const err = doc && doc.errors && doc.errors[0];
    const error = new Error(err ? err.message : response.status + " " + response.statusText);
    error.status = response.status;
    throw error;
  }
  return doc;
}

function accountPath(suffix) {
  return "/api/v0/accounts/" + encodeURIComponent(session.user) + (suffix || "");
}

// The user's choice: "None" and one radio button per registered cache.
function renderChoices(caches, chosen) {
  const box = $("choices");
  box.textContent = "";
  const options = [{ name: null, host: "the registry itself, no cache" }].concat(caches);
  for (const c of options) {
    const label = document.createElement("label");
    label.className = "choice";
    const input = document.createElement("input");
    input.type = "radio";
    input.name = "cache";
    input.value = c.name === null ? "" : c.name;
    input.id = "choice-" + (c.name === null ? "none" : c.name);
    input.checked = c.name === chosen || (c.name === null && !chosen);
    const name = document.createElement("strong");
    name.textContent = c.name === null ? "None" : c.name;
    const host = document.createElement("span");
    host.className = c.name === null ? "note" : "host";
    host.textContent = " " + c.host;
    label.append(input, name, host);
    box.append(label);
  }
}

// The admins' table of caches, each with a Remove button.
function renderAdmin(caches) {
  const rows = $("cache-rows");
  rows.textContent = "";
  for (const c of caches) {
    const tr = document.createElement("tr");
    for (const text of [c.name, c.host, c.id]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    const td = document.createElement("td");
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove";
    remove.id = "remove-" + c.name;
    remove.textContent = "Remove";
    remove.addEventListener("click", () => removeCache(c));
    td.append(remove);
    tr.append(td);
    rows.append(tr);
  }
}

async function refresh() {
  const caches = await call("GET", "/api/v0/content_caches");
  const settings = await call("GET", accountPath("/settings"));
  renderChoices(caches, settings.contentCache);
  if (session.admin) renderAdmin(caches);
}

async function signIn(event) {
  event.preventDefault();
  showError("");
  const user = $("username").value;
  session.user = user;
  session.authorization = "Basic " + btoa(unescape(encodeURIComponent(user + ":" + $("password").value)));
  try {
    const account = await call("GET", accountPath());
    session.admin = account.isAdmin === true;
    $("password").value = "";
    $("user-name").textContent = user + (session.admin ? " (admin)" : "");
    $("signin").hidden = true;
    $("who").hidden = false;
    $("profile").hidden = false;
    $("admin").hidden = !session.admin;
    await refresh();
  } catch (e) {
    session.user = session.authorization = null;
    showError(e.status === 401 ? "The registry refused these credentials." : e.message);
  }
}

function signOut() {
  session.user = session.authorization = null;
  session.admin = false;
  $("signin").hidden = false;
  $("who").hidden = true;
  $("profile").hidden = true;
  $("admin").hidden = true;
  $("saved").textContent = "";
  showError("");
}

async function saveChoice(event) {
  event.preventDefault();
  showError("");
  $("saved").textContent = "";
  const picked = document.querySelector('input[name="cache"]:checked');
  const name = picked && picked.value ? picked.value : null;
  try {
    const settings = await call("PUT", accountPath("/settings"), { contentCache: name });
    $("saved").textContent = "Saved: " + (settings.contentCache || "no cache") + ".";
  } catch (e) {
    showError(e.message);
  }
}

async function registerCache(event) {
  event.preventDefault();
  showError("");
  try {
    await call("POST", "/api/v0/content_caches", { name: $("cache-name").value, host: $("cache-host").value });
    $("cache-name").value = "";
    $("cache-host").value = "";
    await refresh();
  } catch (e) {
    showError(e.message);
  }
}

async function removeCache(cache) {
  showError("");
  try {
    await call("DELETE", "/api/v0/content_caches/" + encodeURIComponent(cache.id));
    await refresh();
  } catch (e) {
    showError(e.message);
  }
}

$("signin-form").addEventListener("submit", signIn);
$("signout").addEventListener("click", signOut);
$("choice-form").addEventListener("submit", saveChoice);
$("register-form").addEventListener("submit", registerCache);
