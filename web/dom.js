// Small helpers for building the page: finding and making elements, copying a link, showing a
// password as typed.

export const $ = (id) => document.getElementById(id);

export function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// Copies the text of a read-only input and says so on `button` for a moment. The text is
// selected first, so that where the clipboard is out of reach (a page not served over HTTPS, a
// browser that refuses) the owner can still copy it by hand.
export async function copyFrom(input, button) {
  input.focus();
  input.select();
  let copied;
  try {
    await navigator.clipboard.writeText(input.value);
    copied = true;
  } catch {
    copied = document.execCommand("copy");
  }
  const label = button.dataset.label || button.textContent;
  button.dataset.label = label;
  button.textContent = copied ? "Copied" : "Selected: press Ctrl+C";
  clearTimeout(button.copyTimer);
  button.copyTimer = setTimeout(() => { button.textContent = label; }, 1500);
  return copied;
}

// A "Show" button beside a password input: the owner has to pass the password on, so may read it.
export function revealToggle(input, button) {
  button.addEventListener("click", () => {
    const shown = input.type === "text";
    input.type = shown ? "password" : "text";
    button.textContent = shown ? "Show" : "Hide";
    button.setAttribute("aria-pressed", String(!shown));
  });
}

export function hidePassword(input, button) {
  input.value = "";
  input.type = "password";
  button.textContent = "Show";
  button.setAttribute("aria-pressed", "false");
}
