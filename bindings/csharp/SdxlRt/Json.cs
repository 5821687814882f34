// JSON through DataContractJsonSerializer (netstandard2.0, mono and .NET; no package dependency).
using System.IO;
using System.Runtime.Serialization.Json;
using System.Text;

namespace SdxlRt
{
    internal static class Json
    {
        /// <summary>Compact JSON for a data contract. DCJS writes "/" as "\/"; that escape is undone here so the text
        /// is what other serializers (and the seed) write. Both spellings mean the same JSON.</summary>
        internal static string Serialize<T>(T value)
        {
            var serializer = new DataContractJsonSerializer(typeof(T));
            using (var stream = new MemoryStream())
            {
                serializer.WriteObject(stream, value);
                return UnescapeSolidus(Encoding.UTF8.GetString(stream.ToArray()));
            }
        }

        /// <summary>Parses JSON into a data contract; unknown keys are ignored, missing ones stay default.</summary>
        internal static T Deserialize<T>(string json)
        {
            var serializer = new DataContractJsonSerializer(typeof(T));
            using (var stream = new MemoryStream(Encoding.UTF8.GetBytes(json)))
            {
                return (T)serializer.ReadObject(stream);
            }
        }

        /// <summary>Rewrites the escape <c>\/</c> to <c>/</c> (only real escapes: <c>\\/</c> is kept).</summary>
        internal static string UnescapeSolidus(string json)
        {
            if (json.IndexOf("\\/", System.StringComparison.Ordinal) < 0)
            {
                return json;
            }
            var sb = new StringBuilder(json.Length);
            for (int i = 0; i < json.Length; i++)
            {
                char c = json[i];
                if (c == '\\' && i + 1 < json.Length)
                {
                    char next = json[i + 1];
                    if (next != '/')
                    {
                        sb.Append(c);
                    }
                    sb.Append(next);
                    i++;
                    continue;
                }
                sb.Append(c);
            }
            return sb.ToString();
        }
    }
}
