/**
 * The one script the server's pages load, served from the server itself (no CDN, no build step):
 * every element with `data-live="URL"` fetches that same-origin URL again every `data-live-sec`
 * seconds and, when the answer changed (ETag), puts it in place. The answer is a fragment the server
 * rendered with the web kit's escaping, so nothing from the field runs; the page's CSP allows scripts
 * from this origin only. When the session ends the updates stop and say so.
 */
export const LIVE_SCRIPT_PATH = '/ui/live.js';

export const LIVE_SCRIPT = `'use strict';
(function () {
  function follow(el) {
    var url = el.getAttribute('data-live');
    var sec = Math.max(1, Number(el.getAttribute('data-live-sec')) || 5);
    var etag = null;
    var updates = 0;
    var timer = null;
    function stop(why) {
      clearInterval(timer);
      el.setAttribute('data-live-stopped', why);
      var p = document.createElement('p');
      p.className = 'err';
      p.textContent = 'Live updates stopped (' + why + '); reload the page.';
      el.parentNode.insertBefore(p, el);
    }
    function poll() {
      var headers = {};
      if (etag) headers['If-None-Match'] = etag;
      fetch(url, { credentials: 'same-origin', cache: 'no-store', redirect: 'error', headers: headers })
        .then(function (res) {
          if (res.status === 304) return;
          if (res.status === 401 || res.status === 403) return stop('signed out');
          if (!res.ok) return;
          etag = res.headers.get('ETag');
          return res.text().then(function (text) {
            el.innerHTML = text;
            updates += 1;
            el.setAttribute('data-live-updates', String(updates));
          });
        })
        .catch(function () {
          /* the server is away for a moment: try again at the next tick */
        });
    }
    timer = setInterval(poll, sec * 1000);
  }
  var els = document.querySelectorAll('[data-live]');
  for (var i = 0; i < els.length; i++) follow(els[i]);
})();
`;
