// The credential the server asks for: an API key (Bearer, API_KEY) and/or a user name and
// password (HTTP Basic, API_AUTH). Kept in sessionStorage only, so it leaves with the tab,
// and sent by the page itself: the server does not make the browser pop its own dialog for
// requests carrying PAGE_HEADER.

const $ = (id) => document.getElementById(id);
const STORAGE = "sd.credential";  // sessionStorage: {"scheme": "Bearer"|"Basic", "value"}
const OLD_KEY_STORAGE = "sd.apiKey";  // where older pages kept the key, in localStorage
export const PAGE_HEADER = ["X-Requested-With", "sd-cpu-page"];

/** Which credential the server wants: "none", "bearer", "basic" or "either". */
export function authMode(limits) {
  if (limits.auth) return limits.auth;
  return limits.api_key_required ? "bearer" : "none";
}

function stored() {
  try {
    return JSON.parse(sessionStorage.getItem(STORAGE)) || null;
  } catch (_) {
    return null;
  }
}

/** The Authorization header value for the stored credential, or "". */
export function authorization() {
  const credential = stored();
  return credential ? `${credential.scheme} ${credential.value}` : "";
}

/** base64 of UTF-8 text (btoa alone takes only Latin-1). */
function base64Utf8(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/** The sign-in panel: fields for the schemes the server takes; `onSaved` reloads data. */
export class CredentialPanel {
  constructor(limits, onSaved) {
    this.mode = authMode(limits);
    this.onSaved = onSaved;
    localStorage.removeItem(OLD_KEY_STORAGE);  // never keep a secret past the session
    $("key-form").addEventListener("submit", (event) => this.save(event));
    $("forget-key").addEventListener("click", () => this.forget());
    this.showFields(this.mode);
    const credential = stored();
    if (credential?.scheme === "Bearer") $("api-key").value = credential.value;
    if (credential?.scheme === "Basic") $("auth-user").value = credential.user || "";
  }

  /** Show the fields for `mode`; a panel for "none" stays hidden until a 401 says otherwise. */
  showFields(mode) {
    const key = mode === "bearer" || mode === "either";
    const basic = mode === "basic" || mode === "either";
    $("key-fields").hidden = !key;
    $("basic-fields").hidden = !basic;
    $("key-intro").textContent = {
      bearer: "This server needs an API key.",
      basic: "This server needs a user name and password.",
      either: "This server needs its API key, or a user name and password.",
    }[mode] || "";
    $("key-panel").hidden = !(key || basic);
  }

  /** A 401 from the server: show the panel (with the schemes its challenge names); returns
   * what to tell the user instead of the server's text, which speaks to API clients. */
  needed(challenge) {
    if (this.mode === "none") {
      const basic = /basic/i.test(challenge || "");
      const bearer = /bearer/i.test(challenge || "") || !basic;
      this.mode = basic && bearer ? "either" : basic ? "basic" : "bearer";
      this.showFields(this.mode);
    }
    const status = stored() ?
      "The server refused these credentials; check them." :
      "Enter the credentials to use this server.";
    $("key-status").textContent = status;
    return `${$("key-intro").textContent} ${status}`;
  }

  save(event) {
    event.preventDefault();
    const key = $("key-fields").hidden ? "" : $("api-key").value.trim();
    const user = $("basic-fields").hidden ? "" : $("auth-user").value;
    const password = $("auth-password").value;
    let status = "Removed.";
    sessionStorage.removeItem(STORAGE);
    if (key) {
      sessionStorage.setItem(STORAGE, JSON.stringify({ scheme: "Bearer", value: key }));
      status = "Key saved for this tab.";
    } else if (user) {
      const value = base64Utf8(`${user}:${password}`);
      sessionStorage.setItem(STORAGE, JSON.stringify({ scheme: "Basic", value, user }));
      status = "Signed in for this tab.";
    }
    $("auth-password").value = "";  // the stored header is enough; keep no plain copy
    $("key-status").textContent = status;
    this.onSaved();
  }

  forget() {
    sessionStorage.removeItem(STORAGE);
    $("api-key").value = "";
    $("auth-user").value = "";
    $("auth-password").value = "";
    $("key-status").textContent = "Credentials removed from this tab.";
  }
}
