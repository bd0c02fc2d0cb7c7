/**
 * The server's web UI in a real browser (Debian's chromium driven by playwright-core), as an operator
 * uses it: sign in, upload an agent build and register a release, build a site's bundle with a canary
 * plan, then telemetry arrives in which the canary failed and the rollouts page (reloading itself)
 * shows the halt with its counts and threshold; pin a group, mark failing agents for "update now",
 * read the audit entries. A viewer sees the pages without their forms and is refused when posting
 * anyway; a bad form gets a coded error page and changes nothing. Screenshots of every page are kept
 * in test-artifacts/server-ui/ (not committed).
 */
import { copyFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser as Chromium, Page } from 'playwright-core';
import type { OwnRecord, RolloutCounts, RolloutEventInfo } from '../core/telemetry.js';
import { ferry, REPO, snapshotDir, tempDir } from './helpers/fixtures.js';
import { killStrays } from './helpers/mirror-proc.js';
import {
  batch,
  enrolment,
  enrolmentInfo,
  heartbeat,
  makeAgent,
  makeMirror,
  type TestAgent,
  type TestMirror,
} from './helpers/server-fixtures.js';
import { startServerProc, type ServerProc } from './helpers/server-proc.js';
import { haveProgram } from './helpers/system.js';
import { makeKey } from './helpers/fixtures.js';
import { waveOf } from '../core/rollout/wave.js';

const HAVE_CHROMIUM = haveProgram('chromium');
const SHOTS = join(REPO, 'test-artifacts/server-ui');

let dir: string;
let cleanup: () => Promise<void>;
let data: string;
let server: ServerProc;
let browser: Chromium;
let mirror: TestMirror;
let viewerPassword: string;
const agents: TestAgent[] = [];
let seq = 0;

const WAVES = [{ percent: 5 }, { percent: 25 }, { percent: 100 }];
let rolloutId = 'ab'.repeat(32);
const counts = (c: Partial<RolloutCounts>): RolloutCounts => ({
  agents: 0,
  pending: 0,
  updating: 0,
  committed: 0,
  failed: 0,
  rolledBack: 0,
  silent: 0,
  ...c,
});
function rollout(
  event: RolloutEventInfo['event'],
  wave: number,
  extra: Partial<RolloutEventInfo> = {},
): OwnRecord {
  return {
    kind: 'rollout',
    seq: ++seq,
    at: new Date().toISOString(),
    rollout: {
      rolloutId,
      manifestSequence: 1,
      version: '1.1.0',
      event,
      wave,
      actor: 'mirror',
      reason: event,
      ...extra,
    },
  };
}

/** What the site's mirror sends home over its link: a signed batch of its own records. */
async function send(records: OwnRecord[]): Promise<void> {
  const from = records[0]!.seq;
  const res = await fetch(`${server.url}/v1/telemetry`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ batches: [batch(mirror, from, records.at(-1)!.seq, records)] }),
  });
  expect(res.status).toBe(202);
  const body = (await res.json()) as { results: { status: string }[] };
  expect(body.results[0]!.status).toBe('stored');
}

beforeAll(async () => {
  if (!HAVE_CHROMIUM) return;
  ({ dir, cleanup } = await tempDir('ferry-server-ui-'));
  await mkdir(SHOTS, { recursive: true });
  data = join(dir, 'server');
  mirror = await makeMirror(dir, 'm1', 'plant-7');
  expect(
    (await ferry(['server', 'register-mirror', '--data', data, '--site', 'plant-7', '--pub', mirror.pubPath]))
      .code,
  ).toBe(0);
  const v = await ferry([
    'server',
    'user',
    'add',
    '--data',
    data,
    '--name',
    'vera',
    '--role',
    'viewer',
    '--json',
  ]);
  viewerPassword = (JSON.parse(v.stdout) as { password: string }).password;
  // the key the server signs bundles with
  await makeKey(join(dir, 'keys'), 'release');
  await mkdir(join(data, 'signing'), { recursive: true });
  await copyFile(join(dir, 'keys/release.key'), join(data, 'signing/bundle.key'));
  server = await startServerProc(data, ['--ui-refresh', '1']);
  // the site's agents enrol and report version 1.0.0
  for (let i = 0; i < 4; i++) agents.push(makeAgent());
  const recs: OwnRecord[] = [];
  agents.forEach((a, i) =>
    recs.push(enrolment(a, ++seq, enrolmentInfo(a, `node-${i}`, i === 0 ? ['canary'] : ['scada']))),
  );
  agents.forEach((a) => recs.push(heartbeat(a, ++seq, 1, { sentAt: new Date().toISOString() })));
  await send(recs);
  const { chromium } = await import('playwright-core');
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu'],
  });
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await server?.stop();
  await killStrays();
  await cleanup?.();
});

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

async function signIn(user: string, password: string): Promise<Page> {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  const errors: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text());
  });
  await page.goto(`${server.url}/`);
  expect(page.url()).toBe(`${server.url}/login`);
  await shot(page, `00-login-${user}`);
  await page.fill('input[name=user]', user);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForURL(`${server.url}/`), page.click('button[type=submit]')]);
  return page;
}

describe.skipIf(!HAVE_CHROMIUM)('the server UI in chromium', () => {
  let page: Page;

  it('signs in and shows the dashboard', async () => {
    page = await signIn('admin', server.password!);
    await shot(page, '01-dashboard');
    expect(await page.textContent('#who')).toContain('admin (admin)');
    expect(await page.textContent('#health')).toContain('plant-7');
  }, 60_000);

  it('uploads an agent build and registers a release', async () => {
    const file = join(dir, 'ferry-agent');
    await writeFile(file, Buffer.alloc(30_000, 9));
    await page.goto(`${server.url}/releases`);
    await page.selectOption('#upload select[name=kind]', 'agent');
    await page.fill('#upload input[name=name]', 'ferry-agent');
    await page.fill('#upload input[name=version]', '1.1.0');
    await page.fill('#upload input[name=platform]', 'linux-x64');
    await page.setInputFiles('#upload input[type=file]', file);
    await Promise.all([page.waitForURL(`${server.url}/releases`), page.click('#upload button')]);
    expect(await page.textContent('#artifacts')).toContain('agent:ferry-agent@1.1.0/linux-x64');
    await page.fill('#register input[name=name]', 'fleet');
    await page.fill('#register input[name=version]', '1.1.0');
    await page.check('#register input[value="agent:ferry-agent@1.1.0/linux-x64"]');
    await Promise.all([page.waitForURL(`${server.url}/releases`), page.click('#register button')]);
    // the build the site runs today, registered as a release of its own (where a rollback goes)
    const older = join(dir, 'ferry-agent-1.0.0');
    await writeFile(older, Buffer.alloc(30_000, 8));
    await page.selectOption('#upload select[name=kind]', 'agent');
    await page.fill('#upload input[name=name]', 'ferry-agent');
    await page.fill('#upload input[name=version]', '1.0.0');
    await page.fill('#upload input[name=platform]', 'linux-x64');
    await page.setInputFiles('#upload input[type=file]', older);
    await Promise.all([page.waitForURL(`${server.url}/releases`), page.click('#upload button')]);
    await page.fill('#register input[name=name]', 'fleet');
    await page.fill('#register input[name=version]', '1.0.0');
    await page.check('#register input[value="agent:ferry-agent@1.0.0/linux-x64"]');
    await Promise.all([page.waitForURL(`${server.url}/releases`), page.click('#register button')]);
    await shot(page, '02-releases');
    expect(await page.textContent('#releases')).toContain('fleet@1.1.0');
    expect(await page.textContent('#releases')).toContain('fleet@1.0.0');
  }, 60_000);

  it('refuses a bad form with a coded error page and changes nothing', async () => {
    const before = await snapshotDir(data);
    delete before['state.json'];
    await page.goto(`${server.url}/releases`);
    await page.fill('#register input[name=name]', 'empty');
    await page.fill('#register input[name=version]', '1');
    await page.click('#register button'); // no artifact ticked
    await page.waitForSelector('#error');
    expect(await page.textContent('#error')).toContain('BAD_INPUT');
    await shot(page, '03-bad-form');
    // a policy the agents would refuse (a schedule they cannot run)
    const bad = join(dir, 'bad-policy.json');
    await writeFile(
      bad,
      JSON.stringify({
        type: 'ferry.policy/v1',
        scripts: [{ script: 'x', groups: ['*'], schedule: 'sometimes' }],
      }),
    );
    await page.goto(`${server.url}/releases`);
    await page.selectOption('#upload select[name=kind]', 'policy');
    await page.fill('#upload input[name=name]', 'baseline');
    await page.fill('#upload input[name=version]', '1');
    await page.setInputFiles('#upload input[type=file]', bad);
    await page.click('#upload button');
    await page.waitForSelector('#error');
    expect(await page.textContent('#error')).toContain('POLICY_INVALID');
    await shot(page, '03-bad-policy');
    await page.goto(`${server.url}/sites`);
    await page.fill('.pin-form input[name=target]', 'group:scada');
    await page.fill('.pin-form input[name=version]', 'latest');
    await page.click('.pin-form button');
    await page.waitForSelector('#error');
    expect(await page.textContent('#error')).toContain('BAD_INPUT');
    const after = await snapshotDir(data);
    delete after['state.json'];
    expect(after).toEqual(before);
  }, 60_000);

  it("builds the site's next bundle with a canary plan", async () => {
    await page.goto(`${server.url}/sites`);
    await page.selectOption('.build-form select[name=release]', 'fleet@1.1.0');
    await page.selectOption('.build-form select[name=strategy]', 'staggered');
    await Promise.all([page.waitForURL(`${server.url}/bundles`), page.click('.build-form button')]);
    await shot(page, '04-bundles');
    const row = await page.textContent('#bundles');
    expect(row).toContain('plant-7-1');
    expect(row).toContain('signed (1 signature(s))');
    await page.goto(`${server.url}/sites`);
    expect(await page.textContent('#site-plant-7 + p')).toMatch(/staggered → 1\.1\.0, waves 5\/25\/100%/);
    // the dashboard now counts the agents still on 1.0.0
    await page.goto(`${server.url}/`);
    expect(await page.textContent('#health')).toContain('4 agents behind');
  }, 60_000);

  it('shows the plan sent, then the halt and the bars move live when telemetry arrives', async () => {
    const catalog = JSON.parse(await readFile(join(data, 'catalog.json'), 'utf8')) as {
      bundles: { rolloutId: string }[];
    };
    rolloutId = catalog.bundles[0]!.rolloutId;
    expect(rolloutId).toMatch(/^[0-9a-f]{64}$/);
    await page.goto(`${server.url}/sites/plant-7/rollouts`);
    let navigations = 0;
    page.on('framenavigated', (f) => {
      if (f === page.mainFrame()) navigations++;
    });
    // the plan the site was sent: every wave, none reported yet
    const section = `#rollout-${rolloutId.slice(0, 12)}`;
    expect(await page.textContent(`${section} .status`)).toBe('sent');
    expect(await page.textContent(`${section} .strategy`)).toBe('staggered');
    expect(await page.textContent(`${section} .max-failure`)).toBe('10.0%');
    const rows = page.locator(`${section} table`).first().locator('tbody tr');
    expect(await rows.count()).toBe(3);
    const waveText = async (i: number) => (await rows.nth(i).innerText()).replace(/\s+/g, ' ');
    expect(await waveText(0)).toMatch(/^1 5 % 30 min 0 % no report yet/);
    expect(await waveText(2)).toMatch(/^3 100 % 0 min 0 % no report yet/);
    // the fleet the server sees, placed in waves as the mirror places them: all four still pending
    const canary = agents[0]!;
    const canaryWave = waveOf(rolloutId, canary.id, WAVES);
    let fleetTotal = 0;
    for (let i = 0; i < 3; i++) {
      const n = agents.filter((a) => waveOf(rolloutId, a.id, WAVES) === i).length;
      fleetTotal += n;
      if (n) expect(await waveText(i)).toContain(`agents ${n}, pending ${n}`);
      else expect(await waveText(i)).toContain('no agent');
    }
    expect(fleetTotal).toBe(4);
    await shot(page, '05-rollouts-sent');

    // the site's mirror reports over its link while the page stays open
    await send([
      rollout('started', 0, { counts: counts({ agents: 1, pending: 1 }) }),
      heartbeat(canary, ++seq, 2, {
        sentAt: new Date().toISOString(),
        version: '1.0.0',
        results: [
          { name: 'update', ok: false, reason: 'self-test failed' },
          {
            update: {
              outcome: 'failed',
              version: '1.1.0',
              reason: 'self-test failed',
              at: new Date().toISOString(),
            },
          },
        ],
      }),
      rollout('halted', 0, {
        counts: counts({ agents: 1, failed: 1 }),
        threshold: 0.1,
        failureRate: 1,
        reason: 'failure rate 100% over maxFailureRate 10%',
      }),
    ]);
    // no one clicks: the page's script brings the new rows
    await page.waitForSelector('.halt', { timeout: 30_000 });
    const halt = await page.textContent('.halt');
    expect(halt).toContain('HALTED at wave 1');
    expect(halt).toContain('failure rate 100.0%');
    expect(halt).toContain('threshold 10.0%');
    expect(halt).toContain('failed 1');
    expect(await page.textContent(`${section} .status`)).toBe('halted');
    expect(await page.getAttribute(`${section} tbody tr:first-child .bar.reported .c-failed`, 'title')).toBe(
      'failed 1',
    );
    expect(await waveText(0)).toMatch(/^1 5 % 30 min 0 % agents 1, failed 1/);
    expect(
      await page.getAttribute(
        `${section} tbody tr:nth-child(${canaryWave + 1}) .bar.fleet .c-failed`,
        'title',
      ),
    ).toBe('failed 1');
    expect(await waveText(1)).toContain('no report yet'); // a wave no event mentions still shows
    expect(Number(await page.getAttribute('#live', 'data-live-updates'))).toBeGreaterThan(0);
    expect(navigations).toBe(0);
    // the fragment the script polls: 304 while nothing changes; without a session 401, never data
    const live = `${server.url}/sites/plant-7/rollouts/live`;
    const first = await page.request.get(live);
    expect(first.status()).toBe(200);
    const etag = first.headers().etag!;
    expect((await page.request.get(live, { headers: { 'If-None-Match': etag } })).status()).toBe(304);
    const anonymous = await fetch(live, { redirect: 'manual' });
    expect(anonymous.status).toBe(401);
    expect(await anonymous.text()).not.toContain('HALTED');
    expect(page.url()).toBe(`${server.url}/sites/plant-7/rollouts`);
    await shot(page, '06-rollouts-halted');
    await page.goto(`${server.url}/`);
    expect(await page.textContent('#alerts')).toContain('HALTED at wave 1');
    await shot(page, '07-dashboard-alert');
  }, 90_000);

  it('pins a group, and marks the failing agent for "update now" from the filtered agents page', async () => {
    await page.goto(`${server.url}/sites`);
    await page.fill('.pin-form input[name=target]', 'group:scada');
    await page.fill('.pin-form input[name=version]', '1.0.0');
    await Promise.all([page.waitForURL(`${server.url}/sites`), page.click('.pin-form button')]);
    expect(await page.textContent('#site-plant-7 ~ table')).toContain('group:scada');
    await shot(page, '08-sites-pinned');
    await page.goto(`${server.url}/agents?site=plant-7&failing=1`);
    expect(await page.textContent('#pager')).toContain('1 agent(s)');
    expect(await page.textContent('#agents')).toContain('node-0');
    await page.check(`input[name=agents][value="${agents[0]!.id}"]`);
    await page.check('#bulk input[value=update-now]');
    await Promise.all([page.waitForURL(`${server.url}/agents`), page.click('#bulk button')]);
    await shot(page, '09-agents');
    await page.goto(`${server.url}/agents/${agents[0]!.id}`);
    expect(await page.textContent('#results')).toContain('self-test failed');
    await shot(page, '10-agent');
    await page.goto(`${server.url}/sites`);
    expect(await page.textContent('#site-plant-7 + p')).toContain('1 marked "update now"');
  }, 60_000);

  it('rolls the site back to the older release from the rollouts page; bad rollbacks change nothing', async () => {
    await page.goto(`${server.url}/sites/plant-7/rollouts`);
    expect(await page.textContent('#site-decides')).toContain("the site's own decisions");
    const csrf = (await page.getAttribute('#rollback input[name=csrf]', 'value'))!;
    // not older than the site's target, unknown, no CSRF token: refused, nothing changed
    const before = await snapshotDir(data);
    delete before['state.json'];
    for (const [form, status, code] of [
      [{ csrf, release: 'fleet@1.1.0' }, 400, 'BAD_INPUT'],
      [{ csrf, release: 'fleet@0.1' }, 404, 'UNKNOWN_RELEASE'],
      [{ csrf, release: '' }, 400, 'BAD_INPUT'],
      [{ release: 'fleet@1.0.0' }, 403, 'CSRF_REJECTED'],
    ] as const) {
      const res = await page.request.post(`${server.url}/sites/plant-7/rollback`, { form, maxRedirects: 0 });
      expect(res.status(), JSON.stringify(form)).toBe(status);
      expect(await res.text()).toContain(code);
    }
    const after = await snapshotDir(data);
    delete after['state.json'];
    expect(after).toEqual(before);
    expect(await page.textContent('#rollback select[name=release]')).toContain('fleet@1.0.0 (agent 1.0.0)');
    await page.selectOption('#rollback select[name=release]', 'fleet@1.0.0');
    await Promise.all([
      page.waitForURL(`${server.url}/sites/plant-7/rollouts`),
      page.click('#rollback button'),
    ]);
    // the newest plan sent: the older agent, at once, to every wave
    const first = page.locator('section.rollout').first();
    expect(await first.locator('h2').textContent()).toMatch(/1\.0\.0 —\s*sent/);
    expect(await first.locator('.strategy').textContent()).toBe('immediate');
    await shot(page, '11-rollouts-rollback');
    await page.goto(`${server.url}/sites`);
    const pins = (await page.textContent('#site-plant-7 ~ table'))!;
    expect(pins).toMatch(/group:canary\s*1\.0\.0/);
    expect(pins).toMatch(/group:scada\s*1\.0\.0/);
    await page.goto(`${server.url}/bundles`);
    expect(await page.textContent('#bundles')).toContain('plant-7-2');
  }, 60_000);

  it('lists every action in the audit log, with its actor', async () => {
    await page.goto(`${server.url}/audit`);
    const text = (await page.textContent('#audit'))!;
    for (const a of [
      'login',
      'artifact.stored',
      'release.registered',
      'bundle.built',
      'pin',
      'update-now',
      'mirror.registered',
      'rollback',
    ])
      expect(text).toContain(a);
    expect(text).toMatch(/admin\s*pin/);
    await shot(page, '12-audit');
    const v = await ferry(['server', 'audit', 'verify', '--data', data]);
    expect(v.code, v.stderr).toBe(0);
  }, 60_000);

  it('lets a viewer read every page, draws no forms for it, and refuses its posts', async () => {
    const vp = await signIn('vera', viewerPassword);
    for (const path of [
      '/',
      '/agents',
      '/releases',
      '/sites',
      '/sites/plant-7/rollouts',
      '/bundles',
      '/audit',
    ]) {
      const res = await vp.goto(`${server.url}${path}`);
      expect(res!.status(), path).toBe(200);
    }
    await vp.goto(`${server.url}/sites`);
    expect(await vp.$('.pin-form')).toBeNull();
    expect(await vp.$('.build-form')).toBeNull();
    await shot(vp, '13-viewer-sites');
    await vp.goto(`${server.url}/sites/plant-7/rollouts`);
    expect(await vp.$('#rollback')).toBeNull();
    expect(await vp.textContent('#live')).toContain('1.0.0');
    await shot(vp, '14-viewer-rollouts');
    const catalog = await readFile(join(data, 'catalog.json'), 'utf8');
    // a viewer who crafts the request anyway (its own cookie and CSRF token) is refused
    const csrf = await vp.getAttribute('input[name=csrf]', 'value');
    const res = await vp.request.post(`${server.url}/sites/plant-7/pins`, {
      form: { csrf: csrf!, target: 'group:scada', version: '9.9.9' },
      maxRedirects: 0,
    });
    expect(res.status()).toBe(403);
    expect(await res.text()).toContain('FORBIDDEN');
    const back = await vp.request.post(`${server.url}/sites/plant-7/rollback`, {
      form: { csrf: csrf!, release: 'fleet@1.0.0' },
      maxRedirects: 0,
    });
    expect(back.status()).toBe(403);
    expect(await back.text()).toContain('FORBIDDEN');
    expect(await readFile(join(data, 'catalog.json'), 'utf8')).toBe(catalog);
  }, 60_000);
});
