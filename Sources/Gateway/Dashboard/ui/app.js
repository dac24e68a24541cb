// The dashboard shell: sign-in, hash routing between pages, and the navigation's state.
// Each page module exports render(root, args, signal); the signal aborts when the page is left.
// `#/models/{id}`, `#/jobs/{id}`, `#/evaluations/{run}` and `#/fine-tuning/{job}` pass the id as the first arg.

import { api, isAbort, session } from './api.js';
import { notice } from './dom.js';
import { overview } from './pages/overview.js';
import { models } from './pages/models.js';
import { modelDetail } from './pages/model.js';
import { teams } from './pages/teams.js';
import { requests } from './pages/requests.js';
import { logs } from './pages/logs.js';
import { jobs } from './pages/jobs.js';
import { evaluations } from './pages/evaluations.js';
import { downloads } from './pages/downloads.js';
import { fineTuning } from './pages/finetuning.js';
import { cluster } from './pages/cluster.js';

const pages = { overview, models, downloads, teams, requests, jobs, evaluations, 'fine-tuning': fineTuning, cluster, logs };
const $ = (id) => document.getElementById(id);
let leave = null;

/** Shows the sign-in form, with an optional message (why the tab was signed out). */
function showLogin(message, kind = 'error') {
  leave?.abort();
  $('nav').hidden = true;
  $('signout').hidden = true;
  $('page').replaceChildren();
  $('login').hidden = false;
  notice($('login-error'), message, kind);
  $('token').focus();
}

/** Renders the page the hash names (`#/models/chat` → the model detail of `chat`). */
function route({ focus = true } = {}) {
  if (!session.token) return showLogin();
  leave?.abort();
  leave = new AbortController();
  $('login').hidden = true;
  $('nav').hidden = false;
  $('signout').hidden = false;
  const [name, ...args] = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const page = pages[name] ? name : 'overview';
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.getAttribute('href') === `#/${page}`) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const root = $('page');
  root.replaceChildren();
  const render = page === 'models' && args[0] ? modelDetail : pages[page];
  render(root, args, leave.signal).catch((error) => {
    if (!isAbort(error)) console.warn(error);
  });
  document.title = `${page[0].toUpperCase()}${page.slice(1)} · Corral`;
  if (focus) $('main').focus();
}

async function signIn(event) {
  event.preventDefault();
  const token = $('token').value.trim();
  const button = event.submitter ?? event.target.querySelector('button');
  button.disabled = true;
  try {
    await api('/admin/instances', { token });
    session.token = token;
    $('token').value = '';
    notice($('login-error'), '');
    if (!location.hash || location.hash === '#') location.hash = '#/overview';
    route();
  } catch (error) {
    const text = error.status === 401 ? `That token was refused: ${error.message}` : `Could not reach Corral: ${error.message}`;
    notice($('login-error'), text, 'error');
    $('token').focus();
  } finally {
    button.disabled = false;
  }
}

session.onUnauthorized = (error) => {
  session.clear();
  showLogin(`The admin token is no longer accepted: ${error.message}`);
};
$('login-form').addEventListener('submit', signIn);
$('signout').addEventListener('click', () => {
  session.clear();
  showLogin('Signed out.', 'info');
});
window.addEventListener('hashchange', () => route());
// The skip link moves focus without touching the hash (the hash is the page's route).
document.querySelector('.skip').addEventListener('click', (event) => {
  event.preventDefault();
  $('main').focus();
});
route({ focus: false });
