package webhookrelay

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// exportedMetricNames gathers the metric families the module exports, with a
// relay open so that the store-backed gauges report too.
func exportedMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	h := provisioned(t, "metrics-names")
	serve(h, "/?token=s3cret", []byte(`{"taskUUID":"t","imageUUID":"i"}`))
	reg := prometheus.NewPedanticRegistry()
	if err := registerMetrics(reg); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := make(map[string]bool)
	for _, f := range families {
		names[f.GetName()] = true
	}
	return names
}

func TestMetricsRegisterTwiceInOneRegistry(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	for range 2 {
		if err := registerMetrics(reg); err != nil {
			t.Fatalf("second registration must be tolerated: %v", err)
		}
	}
}

func TestDashboardQueriesExportedMetrics(t *testing.T) {
	raw, err := os.ReadFile("dashboards/webhook_relay.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	exported := exportedMetricNames(t)
	metricName := regexp.MustCompile(`caddy_webhook_relay_[a-z_]+`)
	queried := 0
	for _, p := range dash.Panels {
		for _, target := range p.Targets {
			for _, name := range metricName.FindAllString(target.Expr, -1) {
				queried++
				base := name
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if trimmed, ok := strings.CutSuffix(name, suffix); ok && exported[trimmed] {
						base = trimmed
					}
				}
				if !exported[base] {
					t.Errorf("panel %q queries %s, which the module does not export (it exports %v)", p.Title, name, exported)
				}
			}
		}
	}
	if queried == 0 {
		t.Fatal("the dashboard queries no webhook_relay metric")
	}
	for _, want := range []string{"requests_total", "deliveries_total", "backlog", "oldest_queued_age_seconds",
		"dead_letters", "ack_duration_seconds", "delivery_duration_seconds"} {
		if !strings.Contains(string(raw), "caddy_webhook_relay_"+want) {
			t.Errorf("the dashboard shows nothing of caddy_webhook_relay_%s", want)
		}
	}
}
