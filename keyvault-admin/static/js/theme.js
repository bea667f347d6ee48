// Colour mode before the first paint (Bootstrap 5.3 colour modes): the stored choice, or
// the system's. Loaded in <head> as a classic script so the page never flashes light.
(() => {
  const stored = localStorage.getItem("kv-theme");
  const dark = window.matchMedia("(prefers-color-scheme: dark)").matches;
  const theme = stored === "light" || stored === "dark" ? stored : dark ? "dark" : "light";
  document.documentElement.setAttribute("data-bs-theme", theme);
})();
