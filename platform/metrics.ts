/**
 * A small Prometheus text-format registry: counters and gauges with labels.
 * Enough for ferry's own figures (mirror, agent); no dependency, no global state.
 */
type Labels = Record<string, string>;

interface Family {
  help: string;
  type: 'counter' | 'gauge';
  values: Map<string, { labels: Labels; value: number }>;
}

const key = (labels: Labels) =>
  Object.keys(labels)
    .sort()
    .map((k) => `${k}=${labels[k]}`)
    .join(',');

const escape = (v: string) => v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');

export class Metrics {
  private readonly families = new Map<string, Family>();

  define(name: string, type: Family['type'], help: string): void {
    if (!/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(name)) throw new Error(`invalid metric name ${name}`);
    if (!this.families.has(name)) this.families.set(name, { help, type, values: new Map() });
  }

  private family(name: string): Family {
    const f = this.families.get(name);
    if (!f) throw new Error(`metric ${name} is not defined`);
    return f;
  }

  inc(name: string, labels: Labels = {}, by = 1): void {
    const f = this.family(name);
    const k = key(labels);
    const cur = f.values.get(k);
    if (cur) cur.value += by;
    else f.values.set(k, { labels, value: by });
  }

  set(name: string, value: number, labels: Labels = {}): void {
    this.family(name).values.set(key(labels), { labels, value });
  }

  /** Drops every labelled value of a gauge (before setting the ones that exist now). */
  reset(name: string): void {
    this.family(name).values.clear();
  }

  get(name: string, labels: Labels = {}): number {
    return this.family(name).values.get(key(labels))?.value ?? 0;
  }

  render(): string {
    const lines: string[] = [];
    for (const [name, f] of this.families) {
      lines.push(`# HELP ${name} ${f.help}`, `# TYPE ${name} ${f.type}`);
      for (const { labels, value } of f.values.values()) {
        const l = Object.entries(labels)
          .map(([k, v]) => `${k}="${escape(v)}"`)
          .join(',');
        lines.push(`${name}${l ? `{${l}}` : ''} ${value}`);
      }
    }
    return lines.join('\n') + '\n';
  }
}
