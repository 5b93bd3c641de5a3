// batchgen review: the page's behaviour, plain JavaScript, no library, nothing from outside.
// It polls /api/results (the ledger may still be filling) for the first results under the
// filters (the server filters: a ledger may hold a million jobs), PAGE more at a time on
// "Show more", keeps one card per job and updates it in place (a playing video keeps
// playing), and posts verdicts, with the reviewer's name, to /api/verdict. The lightbox
// (full size, zoom, frame steps) and compare (a pinned result beside the others of its
// prompt) are drawn over the grid: stepping never reloads the page.
// Text from the ledger is only ever set as textContent, never parsed as HTML.
"use strict";

const POLL_MS = 2000;
const PAGE = 200;       // results asked for at first, and added by "Show more"
const TYPING_MS = 300;  // the search box asks the server once typing pauses
const NAME_KEY = "batchgen.review.reviewer";  // the reviewer's name, once per browser
const SIZE_KEY = "batchgen.review.tiles";
const SIZES = { s: 190, m: 300, l: 560 };  // the narrowest a tile of each size may be, px
const GAP = 10;               // px between tiles (as in review.css)
const DEFAULT_FRAME = 1 / 24; // s: a video's frame until its own is measured
const state = {
  version: null,
  cards: new Map(),     // "campaign/id" -> card element (with ._result)
  groups: new Map(),    // group key -> section element
  current: null,        // the card the keys act on
  counts: null,
  ledger: "",
  limit: PAGE,          // results asked for
  data: null,           // the last answer (total_jobs, shown, more, campaigns, models)
  asked: 0,             // requests sent; an answer older than the last one shown is dropped
  shownAnswer: 0,
  lightbox: false,      // the current card is shown at full size
  pinned: null,         // the card pinned to compare (lightbox only)
  zoom: "fit",          // fit | actual (100%), shared by both panes of compare
};
const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

// -- fetching ------------------------------------------------------------------------------

// The filters the server applies: each select's and the search box's value.
const SERVER_FILTERS = { campaign: "f-campaign", status: "f-status", model: "f-model",
  tag: "f-tag", verdict: "f-verdict", reviewer: "f-reviewer", marks: "f-marks", q: "f-text" };

function query(force) {
  const params = new URLSearchParams({ limit: String(state.limit) });
  for (const [name, id] of Object.entries(SERVER_FILTERS)) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  if (state.version && !force) params.set("since", state.version);
  return "?" + params.toString();
}

async function refresh(force) {
  const mine = ++state.asked;
  const response = await fetch("/api/results" + query(force), { cache: "no-store" });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || "HTTP " + response.status);
  if (mine < state.shownAnswer) return;  // a later request's answer is shown already
  if (data.unchanged) return;
  state.shownAnswer = mine;
  state.version = data.version;
  state.counts = data.counts;
  state.ledger = data.ledger;
  state.data = data;
  render(data.groups);
  $("more").hidden = !data.more;
  document.body.dataset.version = data.version;
  document.body.dataset.ready = "1";
}

// A filter changed: ask the server again, from the first page.
function filtersChanged() {
  state.limit = PAGE;
  applyFilters();
  refresh(true).catch(() => {});
}

let typingTimer = null;
function typed() {
  clearTimeout(typingTimer);
  typingTimer = setTimeout(filtersChanged, TYPING_MS);
}

function showMore() {
  state.limit += PAGE;
  refresh(true).catch(() => {});
}

function poll() {
  refresh(false)
    .then(() => document.body.classList.remove("offline"))
    .catch((error) => {
      document.body.classList.add("offline");
      $("summary").textContent = "cannot reach the review server (" + error.message + "); retrying…";
    })
    .finally(() => setTimeout(poll, POLL_MS));
}

// -- rendering -----------------------------------------------------------------------------

function render(groups) {
  const main = $("groups");
  const seenGroups = new Set();
  const seenCards = new Set();
  groups.forEach((group, gi) => {
    let section = state.groups.get(group.key);
    if (!section) {
      section = el("section", "group");
      const heading = el("h2");
      heading.append(el("span", "campaign", group.campaign), el("span", "prompt", group.prompt));
      section.append(heading, el("div", "row"));
      state.groups.set(group.key, section);
    }
    placeAt(main, section, gi);
    seenGroups.add(group.key);
    const row = section.querySelector(".row");
    group.results.forEach((result, ri) => {
      let card = state.cards.get(result.key);
      if (!card) {
        card = makeCard(result);
        state.cards.set(result.key, card);
      }
      update(card, result);
      placeAt(row, card, ri);
      seenCards.add(result.key);
    });
  });
  for (const [key, card] of state.cards) {
    if (!seenCards.has(key)) { card.remove(); state.cards.delete(key); }
  }
  for (const [key, section] of state.groups) {
    if (!seenGroups.has(key)) { section.remove(); state.groups.delete(key); }
  }
  fillChoices();
  applyFilters();
  if (state.lightbox) showLightbox();
}

// Move a node only when it is not already in place: moving a video pauses it.
function placeAt(parent, node, index) {
  if (parent.children[index] !== node) parent.insertBefore(node, parent.children[index] || null);
}

function makeCard(result) {
  const card = el("article", "card");
  card.tabIndex = -1;
  card.dataset.key = result.key;
  const meta = el("div", "meta");
  const title = el("div", "title");
  title.append(el("span", "id"), el("span", "badge"));
  const actions = el("div", "actions");
  const approve = el("button", "approve", "Approve");
  const reject = el("button", "reject", "Reject");
  const note = el("button", "note-button", "Note");
  approve.type = reject.type = note.type = "button";
  approve.title = "a";
  reject.title = "r";
  note.title = "n";
  approve.addEventListener("click", () => { setCurrent(card); judge(card, "approved"); });
  reject.addEventListener("click", () => { setCurrent(card); rejectWithNote(card); });
  note.addEventListener("click", () => { setCurrent(card); editNote(card); });
  actions.append(approve, reject, note);
  meta.append(title, el("div", "facts"), el("div", "marks"), el("div", "tags"), el("div", "state"),
    el("div", "note"), el("div", "who"), actions);
  const box = el("div", "media");
  box.title = "open at full size (Enter)";
  box.addEventListener("click", () => { setCurrent(card, false); openLightbox(); });
  card.append(box, meta);
  card.addEventListener("click", (event) => {
    if (!event.target.closest("button, .media")) setCurrent(card, false);
  });
  return card;
}

function verdictOf(result) {
  if (result.verdict) return result.verdict;
  return result.status === "completed" ? "unreviewed" : "none";
}

function update(card, result) {
  card._result = result;
  card.dataset.status = result.status;
  card.dataset.verdict = verdictOf(result);
  card.querySelector(".id").textContent = result.id;
  const badge = card.querySelector(".badge");
  badge.className = "badge " + card.dataset.verdict;
  badge.textContent = card.dataset.verdict === "none" ? "" :
    card.dataset.verdict === "unreviewed" ? "to review" : result.verdict;
  card.querySelector(".facts").textContent = facts(result);
  showMarks(card.querySelector(".marks"), marksOf(result));
  const tags = card.querySelector(".tags");
  const tagText = result.tags.join("\u0000");
  if (tags.dataset.text !== tagText) {
    tags.dataset.text = tagText;
    tags.replaceChildren(...result.tags.map((tag) => el("span", "", tag)));
  }
  card.querySelector(".state").textContent = stateText(result);
  card.querySelector(".note").textContent = result.note || "";
  card.dataset.reviewer = result.verdict ? (result.reviewer || "") : "";
  card.querySelector(".who").textContent = whoText(result);
  const judgeable = result.status === "completed" && !!result.task_id;
  card.querySelectorAll(".actions button").forEach((b) => { b.disabled = !judgeable; });
  updateMedia(card, result);
}

// What the first file's marks say (provenance, read when it was saved): {state, badge,
// details} from the server, or null (no saved file).
function marksOf(result) {
  const item = result.media.find((m) => m.marks);
  return item ? item.marks : null;
}

function showMarks(node, marks) {
  node.dataset.state = marks ? marks.state : "";
  node.textContent = marks ? marks.badge : "";
  node.title = marks ? marks.details.join("\n") : "";
}

function facts(result) {
  const parts = [result.model + (result.variant ? " (" + result.variant + ")" : "")];
  if (result.duration) parts.push(result.duration + " s");
  if (result.resolution) parts.push(result.resolution);
  if (result.ratio) parts.push(result.ratio);
  parts.push("$" + result.cost_usd);
  parts.push(result.attempts + (result.attempts === 1 ? " attempt" : " attempts"));
  return parts.join(" · ");
}

// "by Ada · 2026-12-07 09:14 (3 verdicts)": who gave the current verdict, and when.
function whoText(result) {
  const history = result.history || [];
  if (!history.length) return "";
  const last = history[0];
  const by = last.reviewer ? "by " + last.reviewer : "by someone unnamed";
  const what = last.verdict ? by : "withdrawn " + by;
  const more = history.length > 1 ? " (" + history.length + " verdicts)" : "";
  return what + " · " + shortTime(last.at) + more;
}

function shortTime(at) {
  return at ? at.replace("T", " ").slice(0, 16) : "";
}

function stateText(result) {
  if (result.status === "completed") return "";
  let text = result.status;
  if (result.status === "running" && result.progress !== null) text += " " + result.progress + "%";
  if (result.reason) text += " (" + result.reason + ")";
  if (result.error) text += ": " + result.error;
  return text;
}

function updateMedia(card, result) {
  const box = card.querySelector(".media");
  const signature = JSON.stringify(result.media) + "|" + (result.media.length ? "" : stateText(result));
  if (box.dataset.signature === signature) return;
  box.dataset.signature = signature;
  const nodes = [];
  for (const item of result.media.slice(0, 1)) {  // the card shows the first file
    let media;
    if (item.type === "video") {
      media = el("video");
      media.muted = true;
      media.loop = true;
      media.playsInline = true;
      media.preload = "metadata";  // hundreds of cards: fetch each video's start only
    } else {
      media = el("img");
      media.alt = result.prompt;
      media.decoding = "async";
      media.loading = "lazy";
    }
    media.src = item.src;
    media.dataset.local = item.local ? "1" : "0";
    media.addEventListener("error", () => {
      box.append(el("div", "broken", item.local
        ? "the saved file could not be shown"
        : "not loaded: the service's URL may have expired (`batchgen download` saves files)"));
    });
    nodes.push(media);
    if (!item.local) {
      const mark = el("span", "remote", "not saved locally: from the service's URL");
      mark.title = item.src;
      nodes.push(mark);
    }
  }
  if (result.media.length > 1) nodes.push(el("span", "remote", result.media.length + " files"));
  if (!nodes.length) {
    nodes.push(el("div", "placeholder", result.status === "completed"
      ? "no file to show" : stateText(result)));
  }
  box.replaceChildren(...nodes);
}

// -- filters -------------------------------------------------------------------------------

const FILTERS = ["f-campaign", "f-status", "f-model", "f-tag", "f-verdict", "f-reviewer", "f-marks",
  "f-text"];

// Campaigns and models from the server (all of them, not only those shown); tags from the
// results shown (listing every tag of a million jobs would read them all).
function fillChoices() {
  const results = [...state.cards.values()].map((card) => card._result);
  const data = state.data || {};
  setOptions($("f-campaign"), data.campaigns || results.map((r) => r.campaign));
  setOptions($("f-model"), data.models || results.map((r) => r.model));
  setOptions($("f-tag"), results.flatMap((r) => r.tags));
  setOptions($("f-reviewer"), data.reviewers || []);
}

function setOptions(select, values) {
  const chosen = select.value;
  const wanted = [...new Set(chosen ? [...values, chosen] : values)].sort();
  const have = [...select.options].slice(1).map((o) => o.value);
  if (wanted.join("\u0000") === have.join("\u0000")) return;
  select.replaceChildren(el("option", "", "all"), ...wanted.map((v) => {
    const option = el("option", "", v);
    option.value = v;
    return option;
  }));
  select.firstChild.value = "";
  select.value = chosen;
}

function matches(card) {
  const r = card._result;
  const f = (id) => $(id).value;
  if (f("f-campaign") && r.campaign !== f("f-campaign")) return false;
  if (f("f-status") && r.status !== f("f-status")) return false;
  if (f("f-model") && r.model !== f("f-model")) return false;
  if (f("f-tag") && !r.tags.includes(f("f-tag"))) return false;
  if (f("f-verdict") && verdictOf(r) !== f("f-verdict")) return false;
  if (f("f-reviewer") && !(r.verdict && r.reviewer === f("f-reviewer"))) return false;
  if (f("f-marks") && !r.media.some((m) => m.marks && m.marks.state === f("f-marks"))) return false;
  const text = f("f-text").trim().toLowerCase();
  if (text && !(r.prompt.toLowerCase().includes(text) || r.id.toLowerCase().includes(text))) return false;
  return true;
}

function applyFilters() {
  let shown = 0;
  for (const section of state.groups.values()) {
    let visible = 0;
    for (const card of section.querySelectorAll("article.card")) {
      card.hidden = !matches(card);
      if (!card.hidden) visible += 1;
    }
    section.hidden = visible === 0;
    shown += visible;
  }
  const filtered = FILTERS.some((id) => $(id).value.trim());
  $("empty").hidden = shown > 0 || (state.cards.size === 0 && !filtered);
  if (!state.current || state.current.hidden || !state.current.isConnected) {
    setCurrent(visibleCards()[0] || null, false);
  }
  summary(shown);
}

function summary(shown) {
  const c = state.counts || { approved: 0, rejected: 0, unreviewed: 0 };
  const data = state.data || {};
  const total = data.total_jobs === undefined ? state.cards.size : data.total_jobs;
  $("summary").textContent = [
    total.toLocaleString("en") + " jobs",
    shown + " shown" + (data.more ? " (more below)" : ""),
    c.approved + " approved", c.rejected + " rejected", c.unreviewed + " to review",
    "ledger " + state.ledger,
  ].join(" · ");
}

function visibleCards() {
  return [...document.querySelectorAll("article.card")].filter((card) => !card.hidden);
}

// -- the current card and verdicts ---------------------------------------------------------

function setCurrent(card, scroll = true) {
  if (state.current === card) return;
  if (state.current) {
    state.current.classList.remove("current");
    const video = state.current.querySelector(".media video");
    if (video) video.pause();
  }
  state.current = card;
  if (state.lightbox) showLightbox();
  if (!card) return;
  card.classList.add("current");
  if (scroll) card.scrollIntoView({ block: "nearest", inline: "nearest" });
  const video = card.querySelector(".media video");
  if (video && !state.lightbox) video.play().catch(() => {});  // muted: browsers allow it
}

// The results the arrows step through: the filtered ones, or while comparing, the other
// results of the pinned one's prompt.
function steps() {
  if (state.pinned) {
    const group = state.pinned.closest("section.group");
    return [...group.querySelectorAll("article.card")]
      .filter((card) => !card.hidden && card !== state.pinned);
  }
  return visibleCards();
}

function move(step) {
  const cards = steps();
  if (!cards.length) return;
  const at = cards.indexOf(state.current);
  const next = at < 0 ? 0 : Math.min(cards.length - 1, Math.max(0, at + step));
  setCurrent(cards[next]);
}

function nextAfter(card) {
  const cards = steps();
  return cards[cards.indexOf(card) + 1] || null;
}

async function judge(card, verdict, note, advance = true) {
  const result = card._result;
  if (result.status !== "completed" || !result.task_id) return false;
  const reviewer = reviewerName();
  if (!reviewer) {  // asked once per browser, then the verdict goes on
    askName(() => judge(card, verdict, note, advance));
    return false;
  }
  const next = nextAfter(card);
  const body = {
    campaign: result.campaign, job_id: result.id, task_id: result.task_id,
    verdict: verdict, note: note === undefined ? result.note : note, reviewer: reviewer,
  };
  let response, data;
  try {
    response = await fetch("/api/verdict", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    data = await response.json();
  } catch (error) {
    toast("not saved: " + error.message, true);
    return false;
  }
  if (!response.ok) {
    toast("not saved: " + (data.error || "HTTP " + response.status), true);
    if (response.status === 409) refresh(true).catch(() => {});
    return false;
  }
  const entry = { verdict: data.verdict, note: data.note, reviewer: data.reviewer, at: data.at };
  update(card, { ...result, verdict: data.verdict, note: data.note, verdict_at: data.at,
    reviewer: data.reviewer, history: [entry, ...(result.history || [])] });
  if (state.lightbox) showLightbox();
  toast((data.verdict || "verdict withdrawn") + ": " + result.id + (data.note ? " (note saved)" : ""));
  if (advance && state.current === card && next && next.isConnected) setCurrent(next);
  refresh(false).catch(() => {});  // the counts, and anything a run added meanwhile
  return true;
}

function rejectWithNote(card) {
  askNote(card, "Reject " + card._result.id, (note) => judge(card, "rejected", note),
    () => judge(card, "rejected"));
}

function editNote(card) {
  const result = card._result;
  if (result.status !== "completed") return;
  askNote(card, "Note on " + result.id,
    (note) => judge(card, result.verdict || null, note, false), null);
}

let noteDone = null;
function askNote(card, title, onSave, onCancel) {
  const box = $("note-box");
  $("note-title").textContent = title;
  $("note-for").textContent = card._result.prompt;
  $("note-text").value = card._result.note || "";
  noteDone = { onSave, onCancel, card };
  box.hidden = false;
  $("note-text").focus();
}

function closeNote(save) {
  const done = noteDone;
  noteDone = null;
  $("note-box").hidden = true;
  if (!done) return;
  done.card.focus({ preventScroll: true });
  if (save) done.onSave($("note-text").value);
  else if (done.onCancel) done.onCancel();
}

let toastTimer = null;
function toast(text, error) {
  const box = $("toast");
  box.textContent = text;
  box.classList.toggle("error", !!error);
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, error ? 6000 : 2000);
}

// -- keys ----------------------------------------------------------------------------------

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (!$("name-box").hidden) {
    if (event.key === "Escape") { event.preventDefault(); closeName(false); }
    else if (event.key === "Enter") { event.preventDefault(); closeName(true); }
    return;
  }
  if (!$("note-box").hidden) {
    if (event.key === "Escape") { event.preventDefault(); closeNote(false); }
    else if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); closeNote(true); }
    return;
  }
  if (!$("help").hidden) {
    if (event.key === "Escape" || event.key === "?") { event.preventDefault(); $("help").hidden = true; }
    return;
  }
  const typing = event.target.closest && event.target.closest("input, textarea, select");
  if (typing) {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  const card = state.current;
  if (state.lightbox && lightboxKey(event.key)) { event.preventDefault(); return; }
  switch (event.key) {
    case "j": case "ArrowRight": move(1); break;
    case "k": case "ArrowLeft": move(-1); break;
    case "g": setCurrent(steps()[0] || null); break;
    case "G": setCurrent(steps().slice(-1)[0] || null); break;
    case "a": if (card) judge(card, "approved"); break;
    case "r": if (card && card._result.status === "completed") rejectWithNote(card); break;
    case "n": if (card) editNote(card); break;
    case "u": if (card) judge(card, null, undefined, false); break;
    case "Enter": if (card) openLightbox(); break;
    case "p": if (card) pin(card); break;
    case "t": cycleSize(); break;
    case " ": {
      const video = card && card.querySelector(".media video");
      if (!video) return;
      if (video.paused) video.play().catch(() => {}); else video.pause();
      break;
    }
    case "/": $("f-text").focus(); break;
    case "?": $("help").hidden = false; break;
    default: return;
  }
  event.preventDefault();
}

// Keys of the lightbox only; the others (arrows, verdicts) are the grid's, on the card shown.
// While comparing, the pinned video plays, pauses and steps with the other one.
function lightboxKey(key) {
  const video = $("lb-main").querySelector("video");
  const videos = [...$("lightbox").querySelectorAll(".lb-media video")];
  switch (key) {
    case "Escape": closeLightbox(); return true;
    case "Enter": return true;
    case "z": setZoom(state.zoom === "fit" ? "actual" : "fit"); return true;
    case "p": pin(state.pinned ? null : state.current); return true;
    case " ": {
      const play = video ? video.paused : videos.some((v) => v.paused);
      for (const v of videos) { if (play) v.play().catch(() => {}); else v.pause(); }
      return true;
    }
    case ",": case ".":
      for (const v of videos) stepFrame(v, key === "." ? 1 : -1);
      return true;
    case "m": if (video) video.muted = !video.muted; return true;
    default: return false;
  }
}

// -- the reviewer's name -------------------------------------------------------------------

function reviewerName() {
  try { return localStorage.getItem(NAME_KEY) || ""; } catch (error) { return state.name || ""; }
}

function setReviewerName(name) {
  state.name = name;
  try { localStorage.setItem(NAME_KEY, name); } catch (error) { /* private mode: this page only */ }
  showName();
}

function showName() {
  const name = reviewerName();
  $("who").textContent = name ? "reviewing as " + name : "your name?";
  document.body.dataset.reviewer = name;
}

let nameDone = null;
function askName(then) {
  nameDone = then || null;
  $("name-text").value = reviewerName();
  $("name-hint").textContent = "Enter saves · Esc cancels";
  $("name-box").hidden = false;
  $("name-text").focus();
}

function closeName(save) {
  const name = $("name-text").value.trim();
  if (save && !/^[\p{L}\p{N}][^\p{Cc}]{0,59}$/u.test(name)) {
    $("name-hint").textContent = "A name starts with a letter or a digit (at most 60 characters).";
    return;
  }
  const then = nameDone;
  nameDone = null;
  $("name-box").hidden = true;
  if (!save) return;
  setReviewerName(name);
  if (then) then();
}

// -- tiles ---------------------------------------------------------------------------------

function tileSize() {
  try { return localStorage.getItem(SIZE_KEY) || "m"; } catch (error) { return "m"; }
}

function setSize(size) {
  try { localStorage.setItem(SIZE_KEY, size); } catch (error) { /* this page only */ }
  document.body.dataset.size = size;
  for (const button of document.querySelectorAll("#sizes button")) {
    button.classList.toggle("chosen", button.dataset.size === size);
  }
  fitTiles();
  if (state.current) state.current.scrollIntoView({ block: "nearest" });
}

function cycleSize() {
  const order = Object.keys(SIZES);
  setSize(order[(order.indexOf(tileSize()) + 1) % order.length]);
}

// Tiles as wide as fills the page's width exactly: as many columns of at least the size's
// width as fit, sharing what is left.
function fitTiles() {
  const main = $("groups");
  const style = getComputedStyle(main);
  const width = main.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const least = SIZES[tileSize()] || SIZES.m;
  const columns = Math.max(1, Math.floor((width + GAP) / (least + GAP)));
  const tile = Math.floor((width - GAP * (columns - 1)) / columns);
  document.documentElement.style.setProperty("--tile", tile + "px");
  document.body.dataset.columns = String(columns);
}

// -- the lightbox and compare --------------------------------------------------------------

function openLightbox() {
  if (!state.current) return;
  state.lightbox = true;
  const video = state.current.querySelector(".media video");
  if (video) video.pause();
  $("lightbox").hidden = false;
  document.body.classList.add("lightbox-open");
  showLightbox();
}

function closeLightbox() {
  state.lightbox = false;
  state.pinned = null;
  $("lightbox").hidden = true;
  document.body.classList.remove("lightbox-open");
  for (const pane of ["lb-main", "lb-pinned"]) {
    paneMedia(pane).replaceChildren();
    paneMedia(pane).dataset.signature = "";
  }
  if (state.current) state.current.scrollIntoView({ block: "nearest" });
}

function paneMedia(id) {
  return $(id).querySelector(".lb-media");
}

// Pin `card` (null: unpin) and show the others of its prompt beside it.
function pin(card) {
  if (card) {
    const others = [...card.closest("section.group").querySelectorAll("article.card")]
      .filter((c) => !c.hidden && c !== card);
    if (!others.length) {
      toast("no other result of this prompt to compare with", true);
      return;
    }
    state.pinned = card;
    if (!state.lightbox) openLightbox();
    setCurrent(others[0], false);
  } else {
    const was = state.pinned;
    state.pinned = null;
    if (was) setCurrent(was, false);
  }
  showLightbox();
}

function showLightbox() {
  const box = $("lightbox");
  if (state.pinned && !state.pinned.isConnected) state.pinned = null;
  const card = state.current;
  if (!card) { closeLightbox(); return; }
  const comparing = !!state.pinned && state.pinned !== card;
  box.dataset.compare = comparing ? "1" : "0";
  box.dataset.key = card.dataset.key;
  box.dataset.pinned = comparing ? state.pinned.dataset.key : "";
  fillPane("lb-main", card, true);
  if (comparing) fillPane("lb-pinned", state.pinned, false);
  else { paneMedia("lb-pinned").replaceChildren(); paneMedia("lb-pinned").dataset.signature = ""; }
  const result = card._result;
  $("lb-title").textContent = result.campaign + " / " + result.id;
  const verdict = verdictOf(result);
  $("lb-badge").className = "badge " + verdict;
  $("lb-badge").textContent = verdict === "none" ? result.status :
    verdict === "unreviewed" ? "to review" : verdict;
  const list = steps();
  $("lb-position").textContent = (list.indexOf(card) + 1) + " of " + list.length +
    (comparing ? " of this prompt" : "");
  $("lb-prompt").textContent = result.prompt;
  $("lb-facts").textContent = facts(result) + (result.note ? " · note: " + result.note : "");
  // Each file's marks in full (the card shows the first one's badge).
  const marked = result.media.filter((m) => m.marks);
  $("lb-marks").replaceChildren(...marked.map((m) => {
    const item = el("li");
    const badge = el("span", "marks", (marked.length > 1 ? "file " + (m.n + 1) + ": " : "") + m.marks.badge);
    badge.dataset.state = m.marks.state;
    item.append(badge, ...m.marks.details.map((line) => el("div", "", line)));
    return item;
  }));
  $("lb-history").replaceChildren(...(result.history || []).map((h) => el("li", "",
    (h.verdict || "withdrawn") + " by " + (h.reviewer || "someone unnamed") + " · " +
    shortTime(h.at) + (h.note ? " · " + h.note : ""))));
  $("lb-pin").textContent = state.pinned ? "Unpin" : "Pin to compare";
  $("lb-main").querySelector(".lb-label").textContent = comparing ? "compared" : "";
  const judgeable = result.status === "completed" && !!result.task_id;
  for (const id of ["lb-approve", "lb-reject", "lb-note"]) $(id).disabled = !judgeable;
  setZoom(state.zoom);
}

// The pane `id` shows `card`'s first file (rebuilt only when it changed: a playing video
// goes on playing while the page polls).
function fillPane(id, card, main) {
  const box = paneMedia(id);
  const item = card._result.media[0];
  const signature = card.dataset.key + "|" + JSON.stringify(item || null);
  if (box.dataset.signature === signature) return;
  box.dataset.signature = signature;
  if (!item) {
    box.replaceChildren(el("div", "placeholder", card._result.status === "completed"
      ? "no file to show" : stateText(card._result)));
    return;
  }
  let media;
  if (item.type === "video") {
    media = el("video");
    media.controls = main;  // the pinned one follows the keys (Space, comma, period)
    media.muted = true;
    media.loop = true;
    media.playsInline = true;
    media.preload = "auto";
    media._frame = DEFAULT_FRAME;
    media.addEventListener("loadedmetadata", () => { measureFrame(media); showFrame(media); });
    media.addEventListener("timeupdate", () => showFrame(media));
    media.addEventListener("seeked", () => showFrame(media));
    media.addEventListener("pause", () => showFrame(media));
    media.autoplay = true;
  } else {
    media = el("img");
    media.alt = card._result.prompt;
    media.decoding = "async";
  }
  media.src = item.src;
  media.dataset.local = item.local ? "1" : "0";
  media.addEventListener(item.type === "video" ? "loadedmetadata" : "load", () => setZoom(state.zoom));
  box.replaceChildren(media);
  if (!main) box.addEventListener("scroll", syncScroll);
}

function setZoom(zoom) {
  state.zoom = zoom;
  $("lightbox").dataset.zoom = zoom;
  $("lb-zoom").textContent = zoom === "fit" ? "fit" : "100%";
  $("lb-zoom-button").textContent = zoom === "fit" ? "100%" : "fit";
  for (const id of ["lb-main", "lb-pinned"]) {
    const media = paneMedia(id).querySelector("img, video");
    if (!media) continue;
    const width = media.naturalWidth || media.videoWidth;
    const height = media.naturalHeight || media.videoHeight;
    media.style.width = zoom === "actual" && width ? width + "px" : "";
    media.style.height = zoom === "actual" && height ? height + "px" : "";
  }
}

// The two panes of compare scroll together at 100%: the same part of both pictures.
function syncScroll(event) {
  const from = event.currentTarget;
  const to = from === paneMedia("lb-main") ? paneMedia("lb-pinned") : paneMedia("lb-main");
  if (to.scrollLeft !== from.scrollLeft) to.scrollLeft = from.scrollLeft;
  if (to.scrollTop !== from.scrollTop) to.scrollTop = from.scrollTop;
}

// A video's frame length, measured from two frames the browser presents (where it can say).
function measureFrame(video) {
  if (!video.requestVideoFrameCallback) return;
  let last = null;
  const seen = (now, frame) => {
    if (last && frame.presentedFrames === last.presentedFrames + 1) {
      const length = frame.mediaTime - last.mediaTime;
      if (length > 0.001 && length < 1) { video._frame = length; showFrame(video); return; }
    }
    last = frame;
    video.requestVideoFrameCallback(seen);
  };
  video.requestVideoFrameCallback(seen);
}

function frameAt(video) {
  return Math.floor(video.currentTime / video._frame + 1e-3);
}

function stepFrame(video, step) {
  video.pause();
  const last = Math.max(0, Math.floor(video.duration / video._frame - 1e-3));
  const frame = Math.min(last, Math.max(0, frameAt(video) + step));
  video.currentTime = (frame + 0.5) * video._frame;  // the middle of the frame: no rounding doubt
}

function showFrame(video) {
  if (video !== $("lb-main").querySelector("video")) return;
  const frame = frameAt(video);
  $("lb-frame").textContent = "frame " + (frame + 1) + " · " + video.currentTime.toFixed(2) + " s";
  $("lightbox").dataset.frame = String(frame);
  $("lightbox").dataset.frameLength = video._frame.toFixed(4);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const id of FILTERS) {  // a select says "change" (also when a script picks), a box "input"
    if (id === "f-text") $(id).addEventListener("input", typed);
    else $(id).addEventListener("change", filtersChanged);
  }
  $("more-button").addEventListener("click", showMore);
  $("who").addEventListener("click", () => askName(null));
  $("name-save").addEventListener("click", () => closeName(true));
  $("name-cancel").addEventListener("click", () => closeName(false));
  for (const button of document.querySelectorAll("#sizes button")) {
    button.addEventListener("click", () => setSize(button.dataset.size));
  }
  new ResizeObserver(fitTiles).observe($("groups"));  // the window, or a scroll bar coming
  setSize(tileSize());
  showName();
  const onCurrent = (action) => () => { if (state.current) action(state.current); };
  $("lb-approve").addEventListener("click", onCurrent((card) => judge(card, "approved")));
  $("lb-reject").addEventListener("click", onCurrent(rejectWithNote));
  $("lb-note").addEventListener("click", onCurrent(editNote));
  $("lb-pin").addEventListener("click", () => pin(state.pinned ? null : state.current));
  $("lb-zoom-button").addEventListener("click", () => setZoom(state.zoom === "fit" ? "actual" : "fit"));
  $("lb-close").addEventListener("click", closeLightbox);
  document.addEventListener("keydown", onKey);
  $("help-button").addEventListener("click", () => { $("help").hidden = false; });
  $("help-close").addEventListener("click", () => { $("help").hidden = true; });
  $("note-save").addEventListener("click", () => closeNote(true));
  $("note-cancel").addEventListener("click", () => closeNote(false));
  poll();
});
