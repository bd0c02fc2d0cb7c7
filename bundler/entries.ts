/** The bundle's entry listing lives in platform/bundle-entries.ts (the mirror's link reads it too). */
export { blobDigestsIn, listEntries, type EntryInfo } from '../platform/bundle-entries.js';
