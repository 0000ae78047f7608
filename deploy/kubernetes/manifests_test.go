// Package kubernetes_test checks the manifests in this directory: every
// document decodes strictly into its Kubernetes type, every field spelt in
// Kubernetes' case, the kustomization lists every manifest, images are
// Skiff's own or pinned, every variable a Skiff container sets is one its
// binary documents in --help (that of the subcommand it runs too, for
// skiffctl), and the objects' references to each other (secrets,
// services, ports, volumes) resolve.
package kubernetes_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// skiffImages maps each Skiff image name to the main package of the
// binary it runs, relative to the repository root.
var skiffImages = map[string]string{
	"skiff/converter": "./services/converter/cmd/skiff-converter",
	"skiff/scheduler": "./services/scheduler/cmd/skiff-scheduler",
	"skiff/seeder":    "./services/seeder/cmd/skiff-seeder",
	"skiff/agent":     "./node-agent/cmd/skiff-agent",
	"skiff/skiffctl":  "./cmd/skiffctl",
}

// skiffSubcommands lists, per Skiff image whose binary takes a command
// with flags of its own as first argument, the commands the manifests run.
// A container of the image must run one of them, and may set what the
// command's --help documents besides what the binary's --help does:
// skiffctl names the S3 credentials only in its commands' --store flag.
var skiffSubcommands = map[string][]string{
	"skiff/skiffctl": {"gc"},
}

// kustomization is the part of kustomization.yaml these manifests use;
// decoding it strictly rejects anything else.
type kustomization struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace"`
	Labels     []struct {
		Pairs            map[string]string `json:"pairs"`
		IncludeSelectors bool              `json:"includeSelectors,omitempty"`
	} `json:"labels"`
	Resources []string `json:"resources"`
	Images    []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
		Digest  string `json:"digest,omitempty"`
	} `json:"images"`
}

// helpVars returns, per Skiff image name, the environment variable names
// the --help output of its binary mentions, and per "image command" of
// skiffSubcommands those "binary command --help" mentions. The binaries
// are built from this checkout once per test run.
func helpVars(t *testing.T) map[string][]string {
	t.Helper()
	vars, err := loadHelpVars()
	if err != nil {
		t.Fatal(err)
	}
	return vars
}

var loadHelpVars = sync.OnceValues(func() (map[string][]string, error) {
	root, err := filepath.Abs("../..")
	if err != nil {
		return nil, err
	}
	bin, err := os.MkdirTemp("", "skiff-manifests-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(bin)
	args := []string{"build", "-o", bin + string(filepath.Separator)}
	for _, pkg := range skiffImages {
		args = append(args, pkg)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	envName := regexp.MustCompile(`\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b`)
	vars := map[string][]string{}
	help := func(pkg string, args ...string) ([]string, error) {
		args = append(args, "--help")
		out, err := exec.Command(filepath.Join(bin, filepath.Base(pkg)), args...).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("%s %s: %v\n%s", filepath.Base(pkg), strings.Join(args, " "), err, out)
		}
		return envName.FindAllString(string(out), -1), nil
	}
	for img, pkg := range skiffImages {
		if vars[img], err = help(pkg); err != nil {
			return nil, err
		}
		if len(vars[img]) == 0 {
			return nil, fmt.Errorf("%s --help names no variables", filepath.Base(pkg))
		}
		for _, sub := range skiffSubcommands[img] {
			if vars[img+" "+sub], err = help(pkg, sub); err != nil {
				return nil, err
			}
		}
	}
	return vars, nil
})

func TestManifests(t *testing.T) {
	vars := helpVars(t)
	if errs := checkDir(".", vars); len(errs) > 0 {
		for _, err := range errs {
			t.Error(err)
		}
	}
	// What kubectl applies: the kustomization's output decodes as well,
	// with the namespace and images as configured.
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Log("no kubectl: kustomize output not checked")
		return
	}
	out, err := exec.Command(kubectl, "kustomize", ".").Output()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v", err)
	}
	objs, errs := decodeAll("kustomize output", out)
	for _, err := range errs {
		t.Error(err)
	}
	for _, o := range objs {
		if m := o.meta(); o.kind != "Namespace" && m.Namespace != "skiff" {
			t.Errorf("kustomize output: %s %s in namespace %q, want skiff", o.kind, m.Name, m.Namespace)
		}
	}
	if len(objs) < 10 {
		t.Errorf("kustomize output has %d objects", len(objs))
	}
}

// TestChecksCatchMistakes breaks a copy of the manifests in the ways the
// checks are for, one at a time, and expects each to be reported.
func TestChecksCatchMistakes(t *testing.T) {
	vars := helpVars(t)
	mutations := []struct {
		name, file, old, new, want string
	}{
		{"unknown field", "converter.yaml", "readinessProbe:", "readynessProbe:", `unknown field "readynessProbe"`},
		{"unknown env var", "seeder.yaml", "name: SKIFF_SEEDER_LISTEN", "name: SKIFF_SEEDER_LISTEN_ADDR", "SKIFF_SEEDER_LISTEN_ADDR"},
		{"unused helper var", "agent.yaml", "value: $(POD_IP):8094", "value: 10.0.0.1:8094", "POD_IP"},
		{"unpinned image", "nats.yaml", "image: nats:2.15.2", "image: nats:2", "nor pinned"},
		{"latest image", "minio.yaml", "image: minio/minio:RELEASE.2025-09-07T16-13-09Z", "image: minio/minio:latest", "nor pinned"},
		{"foreign image", "scheduler.yaml", "image: skiff/scheduler:dev", "image: skiff/schedular:dev", "nor pinned"},
		{"missing secret key", "converter.yaml", "key: AWS_SECRET_ACCESS_KEY", "key: AWS_SECRET_KEY", "AWS_SECRET_KEY"},
		{"unlisted file", "kustomization.yaml", "  - agent.yaml\n", "", "agent.yaml"},
		{"selectorless service", "seeder.yaml", "    app.kubernetes.io/name: seeder\n  ports:", "    app.kubernetes.io/name: seeders\n  ports:", "selects no pods"},
		{"wrong probe port", "scheduler.yaml", "path: /healthz\n              port: http\n", "path: /healthz\n              port: healthz\n", `port "healthz"`},
		{"wrong liveness port", "scheduler.yaml", "tcpSocket:\n              port: http", "tcpSocket:\n              port: status", `port "status"`},
		{"wrong metrics port", "seeder.yaml", `prometheus.io/port: "8092"`, `prometheus.io/port: "9092"`, `prometheus.io/port "9092"`},
		{"unknown field in a cron job", "gc.yaml", "concurrencyPolicy:", "concurrentPolicy:", `unknown field "concurrentPolicy"`},
		{"unknown field in a job template", "gc.yaml", "activeDeadlineSeconds:", "activeDeadlineSecond:", `unknown field "activeDeadlineSecond"`},
		{"field in another case", "gc.yaml", "backoffLimit:", "backOffLimit:", "backOffLimit is spelt backoffLimit"},
		{"unknown skiffctl env var", "gc.yaml", "name: SKIFF_STORE", "name: SKIFF_STORE_URL", "SKIFF_STORE_URL"},
		{"cron job secret key", "gc.yaml", "key: AWS_ACCESS_KEY_ID", "key: AWS_ACCESS_KEY", "has no key AWS_ACCESS_KEY"},
		{"unknown skiffctl command", "gc.yaml", `args: ["gc", `, `args: ["collect", `, `"collect"`},
		{"gc without registry", "gc.yaml", `args: ["gc", "registry.example.com"]`, `args: ["gc", "--grace", "48h"]`, "names no registry"},
		{"concurrent collectors", "gc.yaml", "concurrencyPolicy: Forbid", "concurrencyPolicy: Allow", "concurrencyPolicy"},
		{"unpinned skiffctl image", "gc.yaml", "image: skiff/skiffctl:dev", "image: skiff/skiffctl:latest", "tag dev"},
	}
	for _, m := range mutations {
		t.Run(m.name, func(t *testing.T) {
			dir := t.TempDir()
			files, _ := filepath.Glob("*.yaml")
			for _, f := range files {
				data, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				if f == m.file {
					if !bytes.Contains(data, []byte(m.old)) {
						t.Fatalf("%s does not contain %q", f, m.old)
					}
					data = bytes.Replace(data, []byte(m.old), []byte(m.new), 1)
				}
				if err := os.WriteFile(filepath.Join(dir, f), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			errs := checkDir(dir, vars)
			for _, err := range errs {
				if strings.Contains(err.Error(), m.want) {
					return
				}
			}
			t.Errorf("not reported (want an error with %q); errors: %v", m.want, errs)
		})
	}
}

// object is one decoded manifest document.
type object struct {
	where string // file and document number
	kind  string
	obj   any
}

func (o object) meta() metav1.ObjectMeta {
	switch v := o.obj.(type) {
	case *corev1.Namespace:
		return v.ObjectMeta
	case *corev1.Secret:
		return v.ObjectMeta
	case *corev1.Service:
		return v.ObjectMeta
	case *appsv1.Deployment:
		return v.ObjectMeta
	case *appsv1.StatefulSet:
		return v.ObjectMeta
	case *appsv1.DaemonSet:
		return v.ObjectMeta
	case *batchv1.CronJob:
		return v.ObjectMeta
	}
	return metav1.ObjectMeta{}
}

// newObject returns an empty object of the type a document declares.
func newObject(tm metav1.TypeMeta) (any, error) {
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 Namespace":
		return &corev1.Namespace{}, nil
	case "v1 Secret":
		return &corev1.Secret{}, nil
	case "v1 Service":
		return &corev1.Service{}, nil
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, nil
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}, nil
	case "apps/v1 DaemonSet":
		return &appsv1.DaemonSet{}, nil
	case "batch/v1 CronJob":
		return &batchv1.CronJob{}, nil
	}
	return nil, fmt.Errorf("apiVersion %q kind %q is not one these manifests use", tm.APIVersion, tm.Kind)
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeAll splits a multi-document YAML stream and strictly decodes
// each document into its typed object.
func decodeAll(name string, data []byte) ([]object, []error) {
	var objs []object
	var errs []error
	for i, doc := range docSeparator.Split(string(data), -1) {
		where := fmt.Sprintf("%s#%d", name, i+1)
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		if tm == (metav1.TypeMeta{}) {
			if strings.TrimSpace(stripComments(doc)) != "" {
				errs = append(errs, fmt.Errorf("%s: document without apiVersion and kind", where))
			}
			continue
		}
		obj, err := newObject(tm)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
			continue
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", where, tm.Kind, err))
			continue
		}
		// Strict decoding matches field names regardless of case, as Go's
		// JSON decoding does, and the API server does not: it would drop
		// backOffLimit. The decoded object, written back, names each
		// field as Kubernetes does.
		typos, err := caseTypos([]byte(doc), obj)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", where, tm.Kind, err))
			continue
		}
		for _, typo := range typos {
			errs = append(errs, fmt.Errorf("%s: %s: field %s", where, tm.Kind, typo))
		}
		o := object{where: where, kind: tm.Kind, obj: obj}
		if o.meta().Name == "" {
			errs = append(errs, fmt.Errorf("%s: %s without a name", where, tm.Kind))
		}
		objs = append(objs, o)
	}
	return objs, errs
}

// caseTypos returns the fields of doc spelt in another case than the
// typed object decoded from it, written back, spells them, by path.
func caseTypos(doc []byte, obj any) ([]string, error) {
	var orig, round any
	if err := yaml.Unmarshal(doc, &orig); err != nil {
		return nil, err
	}
	data, err := yaml.Marshal(obj)
	if err != nil {
		return nil, err
	}
	if err := yaml.Unmarshal(data, &round); err != nil {
		return nil, err
	}
	var typos []string
	var walk func(path string, o, r any)
	walk = func(path string, o, r any) {
		switch o := o.(type) {
		case map[string]any:
			r, _ := r.(map[string]any)
			for k, ov := range o {
				if rv, ok := r[k]; ok {
					walk(path+"."+k, ov, rv)
					continue
				}
				// Absent in both spellings: a zero value left out
				// when written back.
				for rk := range r {
					if strings.EqualFold(rk, k) {
						typos = append(typos, fmt.Sprintf("%s.%s is spelt %s", path, k, rk))
					}
				}
			}
		case []any:
			r, _ := r.([]any)
			for i := range min(len(o), len(r)) {
				walk(fmt.Sprintf("%s[%d]", path, i), o[i], r[i])
			}
		}
	}
	walk("", orig, round)
	sort.Strings(typos)
	return typos, nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// workload is a pod template and where it comes from.
type workload struct {
	where, kind, name string
	// selector is nil for a CronJob: the Job controller makes the
	// selector of each Job.
	selector *metav1.LabelSelector
	pod      corev1.PodTemplateSpec
	claims   []corev1.PersistentVolumeClaim
}

// workloadOf returns the pod template of an object that runs pods.
func workloadOf(o object) (workload, bool) {
	switch v := o.obj.(type) {
	case *appsv1.Deployment:
		return workload{o.where, "Deployment", v.Name, v.Spec.Selector, v.Spec.Template, nil}, true
	case *appsv1.StatefulSet:
		return workload{o.where, "StatefulSet", v.Name, v.Spec.Selector, v.Spec.Template, v.Spec.VolumeClaimTemplates}, true
	case *appsv1.DaemonSet:
		return workload{o.where, "DaemonSet", v.Name, v.Spec.Selector, v.Spec.Template, nil}, true
	case *batchv1.CronJob:
		return workload{o.where, "CronJob", v.Name, nil, v.Spec.JobTemplate.Spec.Template, nil}, true
	}
	return workload{}, false
}

// checkDir checks the kustomization and manifests in dir against the
// variables each Skiff image's --help documents.
func checkDir(dir string, vars map[string][]string) []error {
	var errs []error
	errorf := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	data, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return []error{err}
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		errorf("kustomization.yaml: %v", err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" || k.Namespace != "skiff" {
		errorf("kustomization.yaml: %s %s namespace %q", k.APIVersion, k.Kind, k.Namespace)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return append(errs, err)
	}
	var manifests []string
	for _, f := range files {
		if base := filepath.Base(f); base != "kustomization.yaml" {
			manifests = append(manifests, base)
		}
	}
	listed := slices.Sorted(slices.Values(k.Resources))
	if !slices.Equal(listed, manifests) {
		errorf("kustomization.yaml: resources %v, but the manifests are %v", listed, manifests)
	}
	for _, img := range k.Images {
		if _, ok := skiffImages[img.Name]; !ok {
			errorf("kustomization.yaml: images: %s is not a Skiff image", img.Name)
		}
	}

	var objs []object
	for _, f := range manifests {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return append(errs, err)
		}
		o, e := decodeAll(f, data)
		objs, errs = append(objs, o...), append(errs, e...)
	}

	secrets := map[string]*corev1.Secret{}
	services := map[string]*corev1.Service{}
	var serviceWhere = map[string]string{}
	var workloads []workload
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *corev1.Secret:
			secrets[v.Name] = v
		case *corev1.Service:
			services[v.Name], serviceWhere[v.Name] = v, o.where
		case *appsv1.StatefulSet:
			if s, ok := services[v.Spec.ServiceName]; !ok || s.Spec.ClusterIP != corev1.ClusterIPNone {
				// Services come first in each file.
				errorf("%s: StatefulSet %s: serviceName %q is not a headless Service defined before it", o.where, v.Name, v.Spec.ServiceName)
			}
		case *batchv1.CronJob:
			// The garbage collector must never run beside itself
			// (pkg/gc): a run still going skips the next.
			if runsGC(v.Spec.JobTemplate.Spec.Template.Spec) && v.Spec.ConcurrencyPolicy != batchv1.ForbidConcurrent {
				errorf("%s: CronJob %s runs skiffctl gc with concurrencyPolicy %q, want %s", o.where, v.Name, v.Spec.ConcurrencyPolicy, batchv1.ForbidConcurrent)
			}
		}
		if w, ok := workloadOf(o); ok {
			workloads = append(workloads, w)
		}
	}

	for _, w := range workloads {
		if w.kind != "CronJob" {
			sel, err := metav1.LabelSelectorAsSelector(w.selector)
			if err != nil || sel.Empty() || !sel.Matches(labels.Set(w.pod.Labels)) {
				errorf("%s: %s: selector %v does not select its own pods (%v, %v)", w.where, w.name, w.selector, w.pod.Labels, err)
			}
		}
		volumes := map[string]bool{}
		for _, v := range w.pod.Spec.Volumes {
			volumes[v.Name] = true
		}
		for _, c := range w.claims {
			volumes[c.Name] = true
		}
		for _, c := range append(slices.Clone(w.pod.Spec.InitContainers), w.pod.Spec.Containers...) {
			where := fmt.Sprintf("%s: %s container %s", w.where, w.name, c.Name)
			errs = append(errs, checkContainer(where, c, vars, secrets, volumes)...)
		}
		// Prometheus scrapes the port the annotation names, whatever the
		// pod listens on.
		if p, ok := w.pod.Annotations["prometheus.io/port"]; ok {
			if n, err := strconv.ParseInt(p, 10, 32); err != nil || !hasPort(w.pod.Spec.Containers, "", int32(n)) {
				errorf("%s: %s: annotation prometheus.io/port %q is no port of its containers", w.where, w.name, p)
			}
		}
	}

	for name, s := range services {
		var matched []corev1.Container
		for _, w := range workloads {
			if len(s.Spec.Selector) > 0 && labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(w.pod.Labels)) {
				matched = append(matched, w.pod.Spec.Containers...)
			}
		}
		if len(matched) == 0 {
			errorf("%s: Service %s selects no pods (selector %v)", serviceWhere[name], name, s.Spec.Selector)
			continue
		}
		for _, p := range s.Spec.Ports {
			if p.TargetPort.StrVal != "" && !hasPort(matched, p.TargetPort.StrVal, 0) {
				errorf("%s: Service %s: targetPort %q is no port of its pods", serviceWhere[name], name, p.TargetPort.StrVal)
			}
		}
	}
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return errs
}

var (
	// pinnedTag is a tag naming one release: not latest, not a bare
	// major version that moves.
	pinnedTag = regexp.MustCompile(`^(v?\d+\.\d+(\.\d+)?([-.+].*)?|RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ)$`)
	varRef    = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
)

func checkContainer(where string, c corev1.Container, vars map[string][]string, secrets map[string]*corev1.Secret, volumes map[string]bool) []error {
	var errs []error
	errorf := func(format string, args ...any) { errs = append(errs, fmt.Errorf(where+": "+format, args...)) }

	name, tag, _ := strings.Cut(c.Image, ":")
	_, skiff := skiffImages[name]
	switch {
	case skiff && tag != "dev":
		errorf("Skiff image %s: the manifests name tag dev (kustomization images: overrides it)", c.Image)
	case !skiff && !strings.Contains(c.Image, "@sha256:") && !pinnedTag.MatchString(tag):
		errorf("image %s is neither Skiff's nor pinned to a release", c.Image)
	}

	// Variables: a Skiff binary's must be documented by its --help; one
	// that is not is allowed only as a helper that a later variable of
	// the container expands with $(NAME).
	defined := map[string]bool{}
	used := map[string]bool{}
	for _, e := range c.Env {
		for _, m := range varRef.FindAllStringSubmatch(e.Value, -1) {
			used[m[1]] = true
			if !defined[m[1]] {
				errorf("env %s refers to $(%s), which is not set before it", e.Name, m[1])
			}
		}
		defined[e.Name] = true
		if ref := e.ValueFrom; ref != nil && ref.SecretKeyRef != nil {
			var inData, inString bool
			if s, ok := secrets[ref.SecretKeyRef.Name]; ok {
				_, inData = s.Data[ref.SecretKeyRef.Key]
				_, inString = s.StringData[ref.SecretKeyRef.Key]
			}
			if !inData && !inString {
				errorf("env %s: secret %s has no key %s", e.Name, ref.SecretKeyRef.Name, ref.SecretKeyRef.Key)
			}
		}
	}
	if skiff {
		documented := vars[name]
		help := filepath.Base(skiffImages[name]) + " --help"
		if subs := skiffSubcommands[name]; subs != nil {
			// The image's entrypoint is the binary: the command is the
			// first argument.
			if len(c.Command) > 0 || len(c.Args) == 0 || !slices.Contains(subs, c.Args[0]) {
				errorf("runs %q %q, not one of the %s commands %v (add it to skiffSubcommands)", c.Command, c.Args, filepath.Base(skiffImages[name]), subs)
			} else {
				documented = append(slices.Clone(documented), vars[name+" "+c.Args[0]]...)
				help += ", " + filepath.Base(skiffImages[name]) + " " + c.Args[0] + " --help"
			}
		}
		for _, e := range c.Env {
			if !slices.Contains(documented, e.Name) && !used[e.Name] {
				errorf("env %s is not a setting of %s (see %s)", e.Name, filepath.Base(skiffImages[name]), help)
			}
		}
		if name == "skiff/skiffctl" && len(c.Command) == 0 && len(c.Args) > 0 && c.Args[0] == "gc" && len(gcTargets(c.Args[1:])) == 0 {
			errorf("skiffctl gc names no registry: it would refuse to run")
		}
	}

	for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
		if p == nil {
			continue
		}
		var port intstr.IntOrString
		switch {
		case p.HTTPGet != nil:
			port = p.HTTPGet.Port
		case p.TCPSocket != nil:
			port = p.TCPSocket.Port
		default:
			continue
		}
		if !hasPort([]corev1.Container{c}, port.StrVal, port.IntVal) {
			errorf("probe port %q is not a port of the container", port.String())
		}
	}
	for _, m := range c.VolumeMounts {
		if !volumes[m.Name] {
			errorf("volume mount %s: no such volume", m.Name)
		}
		if m.MountPropagation != nil && *m.MountPropagation == corev1.MountPropagationBidirectional &&
			(c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged) {
			errorf("volume mount %s: Bidirectional propagation needs a privileged container", m.Name)
		}
	}
	return errs
}

// runsGC reports whether a pod runs skiffctl gc.
func runsGC(pod corev1.PodSpec) bool {
	for _, c := range pod.Containers {
		name, _, _ := strings.Cut(c.Image, ":")
		if name == "skiff/skiffctl" && len(c.Command) == 0 && len(c.Args) > 0 && c.Args[0] == "gc" {
			return true
		}
	}
	return false
}

// gcTargets returns the positional arguments of skiffctl gc: the
// registries and repositories (its flags --store and --grace take a
// value, --dry-run none).
func gcTargets(args []string) []string {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return args[i+1:]
		case !strings.HasPrefix(a, "-"):
			return args[i:]
		case !strings.Contains(a, "="):
			if f := strings.TrimLeft(a, "-"); f == "store" || f == "grace" {
				i++
			}
		}
	}
	return nil
}

// hasPort reports whether a container declares the named or numbered port.
func hasPort(cs []corev1.Container, name string, number int32) bool {
	for _, c := range cs {
		for _, p := range c.Ports {
			if (name != "" && p.Name == name) || (name == "" && p.ContainerPort == number) {
				return true
			}
		}
	}
	return false
}
