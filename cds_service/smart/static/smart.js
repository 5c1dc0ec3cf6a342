// enableWhen for the assessment form: items whose conditions are false are hidden and their inputs
// disabled (a disabled input is not submitted; the server applies the same rule when it writes).
"use strict";
(function () {
  const form = document.getElementById("assessment");
  if (!form) { document.body.dataset.ready = "true"; return; }
  const gated = Array.from(form.querySelectorAll("[data-enable-when]"));

  function values(linkId) {
    return Array.from(form.querySelectorAll("[name='a." + CSS.escape(linkId) + "']"))
      .filter((el) => !el.disabled && ((el.type !== "radio" && el.type !== "checkbox") || el.checked))
      .map((el) => el.value).filter((v) => v !== "");
  }

  function compare(actual, op, expected) {
    const a = isNaN(Number(actual)) ? actual : Number(actual);
    const e = isNaN(Number(expected)) ? expected : Number(expected);
    switch (op) {
      case "=": return String(actual) === String(expected);
      case "!=": return String(actual) !== String(expected);
      case ">": return a > e;
      case "<": return a < e;
      case ">=": return a >= e;
      case "<=": return a <= e;
      default: return false;
    }
  }

  function enabled(el) {
    const rule = JSON.parse(el.dataset.enableWhen);
    const results = rule.conditions.map((c) => {
      const given = values(c.question);
      if (c.operator === "exists") return (given.length > 0) === Boolean(c.answer);
      return given.some((v) => compare(v, c.operator, c.answer));
    });
    return rule.behavior === "any" ? results.some(Boolean) : results.every(Boolean);
  }

  function update() {
    for (let pass = 0; pass < 3; pass++) { // nested conditions settle within a few passes
      for (const el of gated) {
        const on = enabled(el);
        el.hidden = !on;
        el.querySelectorAll("input, select, textarea").forEach((input) => { input.disabled = !on; });
      }
    }
  }

  form.addEventListener("change", update);
  form.addEventListener("submit", () => {
    const button = document.getElementById("save");
    if (button) { button.disabled = true; button.textContent = "Saving…"; }
  });
  update();
  document.body.dataset.ready = "true";
})();
