// Small helpers for building the page: finding and making elements, copying a link.

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
