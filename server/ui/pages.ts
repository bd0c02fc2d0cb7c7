/**
 * The server's pages, by area (each a pure function of what it shows; routes in ./routes.ts).
 */
export { agentPage, agentsPage, dashboardPage } from './pages-fleet.js';
export { auditPage, bundlesPage, releasesPage } from './pages-releases.js';
export { rolloutsPage } from './pages-rollouts.js';
export { sitesPage } from './pages-sites.js';
